//! The phone side's kernel receive stamps (`SO_TIMESTAMPNS`) give the sender's send times even
//! when the receiving task runs late, while user-space arrival times do not: the load tester's
//! pacing figure must not include its own scheduling delay.

use std::net::UdpSocket as StdUdpSocket;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use trunkline_emulators::trunk::{enable_rx_timestamps, recv_stamped};

#[tokio::test(flavor = "current_thread")]
async fn kernel_stamps_keep_the_senders_pacing_when_the_receiver_is_late() {
    let rx = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    enable_rx_timestamps(&rx).expect("SO_TIMESTAMPNS");
    let dest = rx.local_addr().expect("addr");
    const N: u32 = 12;
    // A sender on its own thread, one datagram every 20 ms on an absolute schedule.
    let sender = std::thread::spawn(move || {
        let tx = StdUdpSocket::bind("127.0.0.1:0").expect("bind");
        let start = Instant::now();
        for i in 0..N {
            let due = start + Duration::from_millis(20) * i;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            tx.send_to(&i.to_be_bytes(), dest).expect("send");
        }
    });
    // The receiver is blocked (not even yielding) while the first packets arrive: they queue in
    // the socket and are read back to back.
    std::thread::sleep(Duration::from_millis(130));
    let mut user = Vec::new();
    let mut kernel = Vec::new();
    let mut buf = [0u8; 64];
    for i in 0..N {
        let (n, at, k) = tokio::time::timeout(Duration::from_secs(5), recv_stamped(&rx, &mut buf))
            .await
            .expect("datagram in time")
            .expect("recv");
        assert_eq!(&buf[..n], &i.to_be_bytes(), "in order, intact");
        user.push(at);
        kernel.push(k.expect("every datagram carries a kernel stamp"));
        assert!(
            k.is_some_and(|k| k <= at),
            "stamped before the task read it"
        );
    }
    sender.join().expect("sender");
    let gaps = |t: &[Instant]| -> Vec<Duration> {
        t.windows(2).map(|w| w[1].duration_since(w[0])).collect()
    };
    let (ug, kg) = (gaps(&user), gaps(&kernel));
    // The queued packets were read within a fraction of a ms of each other in user space…
    let bunched = ug.iter().filter(|g| **g < Duration::from_millis(3)).count();
    assert!(bunched >= 3, "user-space gaps {ug:?}");
    // …but their kernel stamps keep the sender's 20 ms (orders of magnitude apart, not µs).
    let off = kg
        .iter()
        .filter(|g| g.abs_diff(Duration::from_millis(20)) > Duration::from_millis(8))
        .count();
    assert!(off <= 1, "kernel gaps {kg:?}");
    let mut sorted = kg.clone();
    sorted.sort();
    let median = sorted[sorted.len() / 2];
    assert!(
        median.abs_diff(Duration::from_millis(20)) < Duration::from_millis(4),
        "kernel gaps {kg:?}"
    );
}
