//! Readiness for systemd's `Type=notify` units (sd_notify(3)).
//!
//! A daemon calls [`listening`] once every socket it serves is bound, so `systemctl start`
//! returns only when clients can connect and units ordered `After=` it start against a daemon
//! that answers; [`stopping`] when shutdown begins. Outside systemd (`NOTIFY_SOCKET` unset: the
//! lab, tests, a shell) both do nothing.

/// Tells the service manager that the daemon is ready, with a one-line status for
/// `systemctl status`.
pub fn listening(status: &str) {
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(status),
    ]);
}

/// Tells the service manager that the daemon is shutting down.
pub fn stopping() {
    notify(&[sd_notify::NotifyState::Stopping]);
}

fn notify(state: &[sd_notify::NotifyState]) {
    // A failed notification is not fatal to the daemon: systemd times the start out and says so
    // in the journal; we log it as well.
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::warn!(error = %e, "could not notify the service manager (NOTIFY_SOCKET)");
    }
}
