//! Fleet mode with `fleet.username`: every etcd call of the dispatcher carries etcd's token.
//! [`crate::fleet::auth`] holds the conversation; this sends its authenticate calls, publishes
//! the token for the workers, sends a call etcd rejected for its token once more with the new
//! one, and hands every other answer to the call's owner (sync, outbox, delivery log) under the
//! token the owner knows.

use super::Dispatcher;
use crate::config::EtcdCredentials;
use crate::fleet::auth::{self, Auth, Authenticated, Verdict};
use crate::fleet::etcd::Request;
use crate::port::{CalloutRefused, DispatchHost};

/// The dispatcher's etcd session.
pub(super) struct Session {
    auth: Auth,
    /// Envoy's token of the authenticate call in flight.
    authenticating: Option<u32>,
    username: String,
}

impl Session {
    pub(super) fn new(credentials: &EtcdCredentials) -> Session {
        Session {
            auth: Auth::new(&credentials.username, &credentials.password),
            authenticating: None,
            username: credentials.username.clone(),
        }
    }
}

/// What an owner sees when a call cannot go out for want of a token.
const NO_TOKEN: CalloutRefused = CalloutRefused {
    unresolved: false,
    no_token: true,
};

impl<H: DispatchHost> Dispatcher<H> {
    /// Starts an etcd call, with the token when `fleet.username` is set (refused while there is
    /// none, as when etcd is down).
    pub(super) fn call_etcd(&mut self, request: &Request) -> Result<u32, CalloutRefused> {
        let Some(fleet) = self.fleet.as_mut() else {
            return Err(NO_TOKEN);
        };
        let Some(session) = fleet.session.as_mut() else {
            return self.host.call_etcd(request, &fleet.cluster, None);
        };
        if !session.auth.pass().usable() {
            return Err(NO_TOKEN);
        }
        let header = session.auth.pass().header();
        let token = self.host.call_etcd(request, &fleet.cluster, header)?;
        session.auth.sent(token, token, request);
        Ok(token)
    }

    /// Whether etcd calls wait for an authentication in flight (the first one, or after a
    /// rejected token): then the owners do not start theirs, rather than fail them.
    pub(super) fn awaiting_token(&self) -> bool {
        let session = self.fleet.as_ref().and_then(|f| f.session.as_ref());
        session.is_some_and(|s| s.authenticating.is_some() && !s.auth.pass().usable())
    }

    /// Authenticates when due; notices a token a worker found rejected.
    pub(super) fn session_tick(&mut self) {
        let now = self.host.now_ms();
        let (shared, _) = auth::shared_pass(self.host.store());
        let Some(fleet) = self.fleet.as_mut() else {
            return;
        };
        let Some(session) = fleet.session.as_mut() else {
            return;
        };
        session.auth.check_shared(&shared);
        let Some(request) = session.auth.due(now) else {
            return self.resend_held();
        };
        match self.host.call_etcd(&request, &fleet.cluster, None) {
            Ok(token) => session.authenticating = Some(token),
            Err(refused) => {
                let failed = session.auth.on_refused(now);
                self.fleet_error(&format!(
                    "authentication: Envoy refused the call ({refused:?})"
                ));
                self.fail_calls(failed);
            }
        }
    }

    /// Takes an answer first: None when it was the session's own (an authentication, or a call
    /// held for a new token), else the token its owner knows it by.
    pub(super) fn on_session_answer(
        &mut self,
        token: u32,
        headers: usize,
        body_size: usize,
    ) -> Option<u32> {
        let Some(session) = self.fleet.as_mut().and_then(|f| f.session.as_mut()) else {
            return Some(token);
        };
        if session.authenticating == Some(token) {
            session.authenticating = None;
            self.on_authenticated(headers, body_size);
            return None;
        }
        if !session.auth.owns(token) {
            return Some(token);
        }
        let answer = self.host.callout_response(headers, body_size);
        let status = answer.status.filter(|_| answer.headers > 0);
        let body = match auth::may_be_rejection(status.as_deref()) {
            true => self.host.callout_body(body_size),
            false => Vec::new(),
        };
        let session = self.fleet.as_mut().and_then(|f| f.session.as_mut())?;
        match session.auth.on_answer(token, status.as_deref(), &body) {
            Verdict::NotOurs => Some(token),
            Verdict::Answer(call) => Some(call),
            Verdict::Held => {
                self.session_tick();
                None
            }
        }
    }

    fn on_authenticated(&mut self, headers: usize, body_size: usize) {
        let now = self.host.now_ms();
        let answer = self.host.callout_response(headers, body_size);
        let status = answer.status.filter(|_| answer.headers > 0);
        let body = self.host.callout_body(body_size);
        let Some(session) = self.fleet.as_mut().and_then(|f| f.session.as_mut()) else {
            return;
        };
        let outcome = session.auth.on_authenticated(status.as_deref(), &body, now);
        auth::publish(self.host.store(), session.auth.pass());
        match outcome {
            Authenticated::Ready => {
                log::info!(
                    "proxy-webhooks: fleet: authenticated to etcd as {:?}",
                    session.username
                );
                self.resend_held();
                self.fleet_tick();
                self.journal_send();
            }
            Authenticated::Failed { why, failed } => {
                self.fleet_error(&format!("authentication: {why}"));
                self.fail_calls(failed);
            }
        }
    }

    /// Sends the calls held for a new token again, once, when there is one.
    fn resend_held(&mut self) {
        let Some(fleet) = self.fleet.as_mut() else {
            return;
        };
        let Some(session) = fleet.session.as_mut() else {
            return;
        };
        let mut failed = Vec::new();
        for (call, request) in session.auth.take_held() {
            let header = session.auth.pass().header();
            match self.host.call_etcd(&request, &fleet.cluster, header) {
                Ok(token) => session.auth.sent(token, call, &request),
                Err(_) => failed.push(call),
            }
        }
        self.fail_calls(failed);
    }

    /// Calls that got no answer: their owners take them as failed (no answer at all).
    fn fail_calls(&mut self, calls: Vec<u32>) {
        for call in calls {
            self.on_fleet_answer(call, 0, 0);
        }
    }
}
