//! The call task's waker for its event sources (SIP events, commands, RTCP, the agent
//! connection and its events), which remembers that one of them fired.
//!
//! A call's task wakes 50 times a second for its media tick, and almost never for anything
//! else. Polling every source again after each tick (an empty-channel check and a waker
//! registration each, on memory that went cold in the 20 ms since) was a few per cent of the
//! gateway's CPU at 250–500 calls. The sources are polled with this waker instead: their
//! registrations stay in place while they are idle, and the task polls them again only when
//! this waker fired (or when it says so itself: a source added, or one that was ready, since
//! more may be waiting). A wake-up by the tick alone then polls the timer only.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Wake, Waker};

/// See the module docs.
#[derive(Debug)]
pub struct EventWake {
    fired: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl EventWake {
    /// A new waker, fired (the sources have never been polled).
    pub fn new() -> Arc<Self> {
        Arc::new(EventWake {
            fired: AtomicBool::new(true),
            task: Mutex::new(None),
        })
    }

    /// Whether the sources must be polled: true once after each [`fire`](Self::fire) or
    /// wake-up.
    pub fn take_fired(&self) -> bool {
        self.fired.swap(false, Ordering::AcqRel)
    }

    /// Poll the sources at the next chance.
    pub fn fire(&self) {
        self.fired.store(true, Ordering::Release);
    }

    /// Forward wake-ups to `task` (the waker of the task polling the sources now).
    pub fn register(&self, task: &Waker) {
        let mut t = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if !t.as_ref().is_some_and(|w| w.will_wake(task)) {
            *t = Some(task.clone());
        }
    }
}

impl Wake for EventWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Flag first: the task, once woken, must see it.
        self.fire();
        let t = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(w) = t.as_ref() {
            w.wake_by_ref();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_wake_up_is_flagged_once_and_reaches_the_task() {
        let ev = EventWake::new();
        assert!(ev.take_fired(), "new: the sources were never polled");
        assert!(!ev.take_fired());
        let count = Arc::new(Count(AtomicUsize::new(0)));
        ev.register(&Waker::from(Arc::clone(&count)));
        let waker = Waker::from(Arc::clone(&ev));
        waker.wake_by_ref();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(ev.take_fired());
        assert!(!ev.take_fired(), "one wake-up, one poll");
        // Woken by value (as a channel does with the clone it kept) also counts.
        waker.wake();
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
        assert!(ev.take_fired());
        assert!(!ev.take_fired());
        ev.fire();
        assert!(ev.take_fired());
    }

    #[test]
    fn wake_ups_go_to_the_task_registered_last() {
        let ev = EventWake::new();
        let (a, b) = (
            Arc::new(Count(AtomicUsize::new(0))),
            Arc::new(Count(AtomicUsize::new(0))),
        );
        ev.register(&Waker::from(Arc::clone(&a)));
        ev.register(&Waker::from(Arc::clone(&b)));
        Waker::from(Arc::clone(&ev)).wake();
        assert_eq!(a.0.load(Ordering::SeqCst), 0);
        assert_eq!(b.0.load(Ordering::SeqCst), 1);
    }
}
