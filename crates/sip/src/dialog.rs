//! Dialogs (RFC 3261 §12) and session timers (RFC 4028), sans-IO.
//!
//! - Creation from a 2xx or a 1xx with a To tag: UAC (§12.1.2, route set = Record-Route reversed) and
//!   UAS (§12.1.1, route set = Record-Route in order); remote target from Contact.
//! - In-dialog requests (§12.2.1.1): local CSeq incremented, Request-URI and Route from the remote
//!   target and the route set (loose and strict routing), Contact on target-refresh requests.
//! - Incoming in-dialog requests (§12.2.2): CSeq lower than the remote CSeq → 500; target refresh
//!   on re-INVITE/UPDATE (and on their 2xx for our requests).
//! - ACK for a 2xx (§13.2.2.4) built with the dialog's route set; re-INVITE glare (§14.1: 491 and
//!   the retry delays).
//! - REFER (RFC 3515) and NOTIFY with `message/sipfrag` progress.
//! - Session timers (RFC 4028): `Session-Expires`/`Min-SE` honoured, refresh at half the interval
//!   when we are the refresher, BYE before expiry otherwise (§10), 422 → retry with a larger Min-SE
//!   (§7.4 / §8.2).

use std::time::{Duration, Instant};

use crate::message::{Method, NameAddr, ParseError, Request, Response, Uri};

/// Which side of the dialog we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// We sent the INVITE.
    Uac,
    /// We received it.
    Uas,
}

/// Early (from a 1xx with a To tag) or confirmed (from a 2xx).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialogState {
    /// From a provisional response.
    Early,
    /// From a 2xx.
    Confirmed,
    /// After BYE, or an error that ends the dialog.
    Terminated,
}

/// Dialog identifier (§12): Call-ID, local tag, remote tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DialogId {
    /// Call-ID.
    pub call_id: String,
    /// Our tag.
    pub local_tag: String,
    /// The peer's tag.
    pub remote_tag: String,
}

impl DialogId {
    /// The id of the dialog an incoming request belongs to (From tag = remote, To tag = local).
    pub fn for_incoming(request: &Request) -> Option<DialogId> {
        Some(DialogId {
            call_id: request.call_id()?.to_owned(),
            local_tag: request.to_tag()?,
            remote_tag: request.from_tag()?,
        })
    }

    /// The id of the dialog a response to one of our requests belongs to.
    pub fn for_response(response: &Response) -> Option<DialogId> {
        Some(DialogId {
            call_id: response.call_id()?.to_owned(),
            local_tag: response.from_tag()?,
            remote_tag: response.to_tag()?,
        })
    }
}

/// Errors from dialog operations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DialogError {
    /// A header needed to build the dialog is missing or malformed.
    #[error("malformed message: {0}")]
    Malformed(#[from] ParseError),
    /// A tag is missing (no To tag in the response, no From tag).
    #[error("missing tag")]
    MissingTag,
    /// The request's CSeq is lower than or equal to one already seen (answer 500, §12.2.2).
    #[error("CSeq out of order")]
    CSeqOutOfOrder,
    /// A re-INVITE arrived while one is pending in either direction (answer 491/500, §14.2).
    #[error("re-INVITE while another is pending")]
    Glare,
}

/// Who refreshes the session (RFC 4028 `refresher`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresher {
    /// We send the refreshes.
    Local,
    /// The peer does; we only watch for expiry.
    Remote,
}

/// What the session timer asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionTimerAction {
    /// Send a refresh (re-INVITE or UPDATE with the current session), RFC 4028 §10.
    Refresh,
    /// No refresh arrived in time: send BYE (RFC 4028 §10).
    Expired,
}

/// RFC 4028 state of one dialog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTimer {
    /// The negotiated Session-Expires.
    pub interval: Duration,
    /// Who refreshes.
    pub refresher: Refresher,
    /// When the session was last refreshed (or established).
    pub last_refresh: Instant,
}

impl SessionTimer {
    /// When to act next: half the interval for the refresher; for the other side the interval minus
    /// min(32 s, interval/3) (RFC 4028 §10).
    pub fn deadline(&self) -> Instant {
        match self.refresher {
            Refresher::Local => self.last_refresh + self.interval / 2,
            Refresher::Remote => {
                self.last_refresh + self.interval - Duration::from_secs(32).min(self.interval / 3)
            }
        }
    }
}

/// `Session-Expires: 1800;refresher=uac` → (1800 s, Some("uac")).
pub fn parse_session_expires(value: &str) -> Option<(Duration, Option<String>)> {
    let mut parts = value.split(';');
    let secs: u64 = parts.next()?.trim().parse().ok()?;
    let mut refresher = None;
    for p in parts {
        if let Some((k, v)) = p.split_once('=')
            && k.trim().eq_ignore_ascii_case("refresher")
        {
            refresher = Some(v.trim().to_ascii_lowercase());
        }
    }
    Some((Duration::from_secs(secs), refresher))
}

/// `Min-SE: 90` → 90 s.
pub fn parse_min_se(value: &str) -> Option<Duration> {
    value
        .split(';')
        .next()?
        .trim()
        .parse()
        .ok()
        .map(Duration::from_secs)
}

/// RFC 4028 §4 default and floor: Min-SE is never below 90 s.
pub const MIN_SE_FLOOR: Duration = Duration::from_secs(90);

/// Rewrites `request` after a 422 (Session Interval Too Small): Min-SE and Session-Expires raised to
/// the response's Min-SE (RFC 4028 §7.4). The caller re-sends it with CSeq+1 as a new transaction.
/// Returns `false` if the 422 carries no usable Min-SE.
pub fn retry_after_422(request: &mut Request, response: &Response) -> bool {
    let Some(min) = response.header("Min-SE").next().and_then(parse_min_se) else {
        return false;
    };
    let secs = min.as_secs();
    let refresher = request
        .header("Session-Expires")
        .next()
        .and_then(parse_session_expires)
        .and_then(|(_, r)| r);
    let se = match refresher {
        Some(r) => format!("{secs};refresher={r}"),
        None => secs.to_string(),
    };
    request.set_header("Session-Expires", se);
    request.set_header("Min-SE", secs.to_string());
    true
}

/// Methods that refresh the remote target (§12.2: re-INVITE; RFC 3311 UPDATE).
fn is_target_refresh(method: &Method) -> bool {
    matches!(method, Method::Invite | Method::Update)
}

/// One dialog.
#[derive(Debug, Clone)]
pub struct Dialog {
    /// Identifier.
    pub id: DialogId,
    /// Our role.
    pub role: Role,
    /// Early / confirmed / terminated.
    pub state: DialogState,
    /// Our URI with our tag (From of our requests).
    pub local: NameAddr,
    /// Peer's URI with its tag (To of our requests).
    pub remote: NameAddr,
    /// Where in-dialog requests go (Contact of the peer).
    pub remote_target: Uri,
    /// Route set (first element first).
    pub route_set: Vec<NameAddr>,
    /// Our Contact.
    pub local_contact: Uri,
    /// Last CSeq we used.
    pub local_cseq: u32,
    /// Highest CSeq seen from the peer.
    pub remote_cseq: Option<u32>,
    /// `sips:` dialog (§12.1.1).
    pub secure: bool,
    /// An INVITE (initial or re-INVITE) we sent is waiting for its final response.
    pub invite_out_pending: bool,
    /// An INVITE from the peer is waiting for our final response.
    pub invite_in_pending: bool,
    /// RFC 4028 session timer, when negotiated.
    pub session_timer: Option<SessionTimer>,
}

impl Dialog {
    /// UAC dialog from our `invite` (as sent) and a 2xx or 1xx-with-tag `response` (§12.1.2).
    pub fn new_uac(
        invite: &Request,
        response: &Response,
        local_contact: Uri,
    ) -> Result<Dialog, DialogError> {
        let remote = response.to()?;
        let remote_tag = remote.tag().ok_or(DialogError::MissingTag)?.to_owned();
        let local = invite.from()?;
        let local_tag = local.tag().ok_or(DialogError::MissingTag)?.to_owned();
        let call_id = invite
            .call_id()
            .ok_or(ParseError::MissingHeader("Call-ID"))?
            .to_owned();
        let mut route_set = response.record_route()?;
        route_set.reverse();
        let remote_target = match response.contact()? {
            Some(c) => c.uri,
            None => invite.uri.clone(),
        };
        let secure = matches!(&invite.uri, Uri::Sip(u) if u.secure);
        Ok(Dialog {
            id: DialogId {
                call_id,
                local_tag,
                remote_tag,
            },
            role: Role::Uac,
            state: if (200..300).contains(&response.status) {
                DialogState::Confirmed
            } else {
                DialogState::Early
            },
            local,
            remote,
            remote_target,
            route_set,
            local_contact,
            local_cseq: invite.cseq()?.seq,
            remote_cseq: None,
            secure,
            invite_out_pending: !(200..300).contains(&response.status),
            invite_in_pending: false,
            session_timer: None,
        })
    }

    /// UAS dialog from the received `invite` and our `response` carrying our To tag (§12.1.1).
    pub fn new_uas(
        invite: &Request,
        response: &Response,
        local_contact: Uri,
    ) -> Result<Dialog, DialogError> {
        let local = response.to()?;
        let local_tag = local.tag().ok_or(DialogError::MissingTag)?.to_owned();
        let remote = invite.from()?;
        let remote_tag = remote.tag().ok_or(DialogError::MissingTag)?.to_owned();
        let call_id = invite
            .call_id()
            .ok_or(ParseError::MissingHeader("Call-ID"))?
            .to_owned();
        let route_set = invite.record_route()?;
        let remote_target = match invite.contact()? {
            Some(c) => c.uri,
            None => remote.uri.clone(),
        };
        let secure = matches!(&invite.uri, Uri::Sip(u) if u.secure);
        Ok(Dialog {
            id: DialogId {
                call_id,
                local_tag,
                remote_tag,
            },
            role: Role::Uas,
            state: if (200..300).contains(&response.status) {
                DialogState::Confirmed
            } else {
                DialogState::Early
            },
            local,
            remote,
            remote_target,
            route_set,
            local_contact,
            local_cseq: 0,
            remote_cseq: Some(invite.cseq()?.seq),
            secure,
            invite_out_pending: false,
            invite_in_pending: !(200..300).contains(&response.status),
            session_timer: None,
        })
    }

    /// The URI of the next hop for in-dialog requests: the first route, else the remote target.
    pub fn next_hop(&self) -> &Uri {
        self.route_set
            .first()
            .map_or(&self.remote_target, |r| &r.uri)
    }

    fn loose_routing(&self) -> bool {
        self.route_set
            .first()
            .is_none_or(|r| r.uri.param("lr").is_some())
    }

    /// A new in-dialog request (§12.2.1.1): CSeq = local CSeq + 1; Request-URI and Route from the
    /// remote target and route set; Contact on INVITE/UPDATE/SUBSCRIBE/REFER. Via is added by the
    /// transaction layer.
    pub fn new_request(&mut self, method: Method) -> Request {
        self.local_cseq = self.local_cseq.wrapping_add(1).max(1);
        let cseq = self.local_cseq;
        self.build_request(method, cseq)
    }

    fn build_request(&self, method: Method, cseq: u32) -> Request {
        let (uri, routes): (Uri, Vec<String>) = if self.loose_routing() {
            (
                self.remote_target.clone(),
                self.route_set.iter().map(ToString::to_string).collect(),
            )
        } else {
            // Strict routing: the first route becomes the Request-URI, the remote target goes last.
            let mut rest: Vec<String> = self
                .route_set
                .iter()
                .skip(1)
                .map(ToString::to_string)
                .collect();
            rest.push(format!("<{}>", self.remote_target));
            let first = self
                .route_set
                .first()
                .map_or(self.remote_target.clone(), |r| r.uri.clone());
            (first, rest)
        };
        let mut r = Request::new(method.clone(), uri);
        for route in routes {
            r.push_header("Route", route);
        }
        r.push_header("Max-Forwards", "70");
        r.push_header("From", self.local.to_string());
        r.push_header("To", self.remote.to_string());
        r.push_header("Call-ID", self.id.call_id.clone());
        r.push_header("CSeq", format!("{cseq} {method}"));
        if matches!(
            method,
            Method::Invite | Method::Update | Method::Subscribe | Method::Refer | Method::Notify
        ) {
            r.push_header("Contact", format!("<{}>", self.local_contact));
        }
        r
    }

    /// The ACK for a 2xx to our INVITE with CSeq `invite_cseq` (§13.2.2.4): same CSeq number, the
    /// dialog's route set; credentials of the INVITE copied when given.
    pub fn ack_for_2xx(&self, invite: &Request) -> Request {
        let seq = invite.cseq().map_or(self.local_cseq, |c| c.seq);
        let mut ack = self.build_request(Method::Ack, seq);
        ack.headers.remove("Contact");
        for name in ["Authorization", "Proxy-Authorization"] {
            ack.headers.copy_from(&invite.headers, name);
        }
        ack
    }

    /// Starts a re-INVITE (§14.1). Fails with [`DialogError::Glare`] while another INVITE is pending.
    pub fn new_reinvite(&mut self) -> Result<Request, DialogError> {
        if self.invite_out_pending || self.invite_in_pending {
            return Err(DialogError::Glare);
        }
        self.invite_out_pending = true;
        Ok(self.new_request(Method::Invite))
    }

    /// A REFER (RFC 3515) asking the peer to call `target`.
    pub fn new_refer(&mut self, target: &Uri) -> Request {
        let mut r = self.new_request(Method::Refer);
        r.push_header("Refer-To", format!("<{target}>"));
        r
    }

    /// A NOTIFY reporting REFER progress with a `message/sipfrag` body (RFC 3515 §2.4.5):
    /// `status` is the status of the referred call; `final` ends the implicit subscription.
    pub fn new_refer_notify(&mut self, status: u16, reason: &str, is_final: bool) -> Request {
        let mut r = self.new_request(Method::Notify);
        r.push_header("Event", "refer");
        let state = if is_final {
            "terminated;reason=noresource"
        } else {
            "active;expires=60"
        };
        r.push_header("Subscription-State", state);
        r.set_body(
            "message/sipfrag;version=2.0",
            format!("SIP/2.0 {status} {reason}\r\n"),
        );
        r
    }

    /// Checks and records an incoming in-dialog request (§12.2.2): CSeq must increase (except ACK
    /// and CANCEL, which reuse the INVITE's); a re-INVITE/UPDATE refreshes the remote target; a
    /// re-INVITE while one of ours is pending is glare.
    pub fn handle_request(&mut self, request: &Request) -> Result<(), DialogError> {
        let cseq = request.cseq()?;
        if !matches!(request.method, Method::Ack | Method::Cancel) {
            if let Some(remote) = self.remote_cseq
                && cseq.seq <= remote
            {
                return Err(DialogError::CSeqOutOfOrder);
            }
            self.remote_cseq = Some(cseq.seq);
        }
        if request.method == Method::Invite {
            if self.invite_out_pending {
                return Err(DialogError::Glare);
            }
            if self.invite_in_pending {
                return Err(DialogError::Glare);
            }
            self.invite_in_pending = true;
        }
        if is_target_refresh(&request.method)
            && let Ok(Some(c)) = request.contact()
        {
            self.remote_target = c.uri;
        }
        if request.method == Method::Bye {
            self.state = DialogState::Terminated;
        }
        Ok(())
    }

    /// We sent the final response to the peer's INVITE.
    pub fn incoming_invite_answered(&mut self, status: u16) {
        if status >= 200 {
            self.invite_in_pending = false;
            if (200..300).contains(&status) {
                self.state = DialogState::Confirmed;
            }
        }
    }

    /// Records a response to one of our in-dialog requests: a 2xx to a re-INVITE/UPDATE refreshes
    /// the remote target; a final response to an INVITE clears the pending flag; 481/408 end the
    /// dialog (§12.2.1.2).
    pub fn handle_response(&mut self, method: &Method, response: &Response) {
        let status = response.status;
        if (200..300).contains(&status) && is_target_refresh(method) {
            if let Ok(Some(c)) = response.contact() {
                self.remote_target = c.uri;
            }
            if *method == Method::Invite {
                self.state = DialogState::Confirmed;
            }
        }
        if *method == Method::Invite && status >= 200 {
            self.invite_out_pending = false;
        }
        if status == 481 || status == 408 {
            self.state = DialogState::Terminated;
        }
    }

    /// How long to wait before retrying a re-INVITE that got 491 (§14.1): 2.1–4 s if we own the
    /// Call-ID (we are the UAC), else 0–2 s, in 10 ms steps; `random` picks within the range.
    pub fn glare_retry_delay(&self, random: u64) -> Duration {
        let steps = random % 200;
        match self.role {
            Role::Uac => Duration::from_millis(2100 + (steps * 950 / 100)),
            Role::Uas => Duration::from_millis(steps * 10),
        }
    }

    // ---- session timers (RFC 4028) --------------------------------------------------------------

    /// Applies the Session-Expires of the 2xx to our INVITE (UAC) or of the INVITE we answered
    /// (UAS, after [`negotiate_session_expires`]); `now` is when the session was (re)established.
    pub fn apply_session_expires(
        &mut self,
        interval: Duration,
        refresher: Option<&str>,
        now: Instant,
    ) {
        let ours = match (self.role, refresher) {
            (Role::Uac, Some("uac")) | (Role::Uas, Some("uas")) => Refresher::Local,
            (_, Some(_)) => Refresher::Remote,
            // No refresher named: the UAS chose not to say; RFC 4028 §7.2 makes the UAC refresh.
            (Role::Uac, None) => Refresher::Local,
            (Role::Uas, None) => Refresher::Remote,
        };
        self.session_timer = Some(SessionTimer {
            interval,
            refresher: ours,
            last_refresh: now,
        });
    }

    /// The session was refreshed (a 2xx to a re-INVITE/UPDATE was sent or received).
    pub fn session_refreshed(&mut self, now: Instant) {
        if let Some(t) = &mut self.session_timer {
            t.last_refresh = now;
        }
    }

    /// The next session-timer deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == DialogState::Terminated {
            return None;
        }
        self.session_timer.map(|t| t.deadline())
    }

    /// Fires the session timer if due.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<SessionTimerAction> {
        let t = self.session_timer.as_mut()?;
        if self.state == DialogState::Terminated || now < t.deadline() {
            return None;
        }
        match t.refresher {
            Refresher::Local => {
                // Avoid firing again until the refresh completes (the 2xx calls session_refreshed).
                t.last_refresh = now;
                Some(SessionTimerAction::Refresh)
            }
            Refresher::Remote => {
                self.session_timer = None;
                Some(SessionTimerAction::Expired)
            }
        }
    }
}

/// UAS side of RFC 4028 §9 for an incoming INVITE: `Err(min_se)` means answer 422 with
/// `Min-SE: min_se`; `Ok(Some((interval, refresher)))` is the Session-Expires to put in the 2xx
/// (with `Require: timer` when the UAC supports it); `Ok(None)` means no session timer.
pub fn negotiate_session_expires(
    invite: &Request,
    our_min_se: Duration,
) -> Result<Option<(Duration, &'static str)>, Duration> {
    let Some((interval, refresher)) = invite
        .header("Session-Expires")
        .next()
        .and_then(parse_session_expires)
    else {
        return Ok(None);
    };
    let min = our_min_se.max(MIN_SE_FLOOR);
    if interval < min {
        return Err(min);
    }
    let uac_supports = invite
        .headers
        .option_tags("Supported")
        .iter()
        .any(|t| t.eq_ignore_ascii_case("timer"));
    let refresher = match refresher.as_deref() {
        Some("uas") => "uas",
        Some("uac") => "uac",
        _ if uac_supports => "uac",
        _ => "uas",
    };
    Ok(Some((interval, refresher)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;
    use bytes::Bytes;

    fn req(s: &str) -> Request {
        match Message::parse(Bytes::from(s.replace('\n', "\r\n"))).unwrap() {
            Message::Request(r) => r,
            Message::Response(_) => panic!("not a request"),
        }
    }

    #[test]
    fn session_expires_parsing_and_422_retry() {
        assert_eq!(
            parse_session_expires("1800;refresher=UAS"),
            Some((Duration::from_secs(1800), Some("uas".into())))
        );
        assert_eq!(parse_min_se(" 120 "), Some(Duration::from_secs(120)));
        let mut r = req(
            "INVITE sip:b@h SIP/2.0\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\nFrom: <sip:a@h>;tag=1\nTo: <sip:b@h>\nCall-ID: c\nCSeq: 1 INVITE\nSession-Expires: 90;refresher=uac\nContent-Length: 0\n\n",
        );
        let mut resp = Response::for_request(&r, 422);
        resp.push_header("Min-SE", "300");
        assert!(retry_after_422(&mut r, &resp));
        assert_eq!(
            r.header("Session-Expires").next(),
            Some("300;refresher=uac")
        );
        assert_eq!(r.header("Min-SE").next(), Some("300"));
    }

    #[test]
    fn uas_negotiation_rejects_small_intervals_with_422() {
        let r = req(
            "INVITE sip:b@h SIP/2.0\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\nFrom: <sip:a@h>;tag=1\nTo: <sip:b@h>\nCall-ID: c\nCSeq: 1 INVITE\nSupported: timer\nSession-Expires: 60\nContent-Length: 0\n\n",
        );
        assert_eq!(
            negotiate_session_expires(&r, Duration::from_secs(90)),
            Err(Duration::from_secs(90))
        );
        assert_eq!(
            negotiate_session_expires(&r, Duration::from_secs(30)),
            Err(MIN_SE_FLOOR),
            "never below 90 s"
        );
    }
}
