//! The host's `verifyUser`, asked for a handshake, a first-message `auth` or a refresh, within
//! `maxVerifying` and `maxVerifyingPerUser`.

use std::time::Duration;

use crate::auth::{Refusal, User};
use crate::delivery::hub::Hub;
use crate::host::callbacks::UserVerifier;
use crate::limits::Over;
use crate::stats::Stats;
use crate::warn;

/// Asks the host to confirm a user; a refusal, an error or no answer in time is a 401.
pub(crate) async fn verify_user(
    verifier: &dyn UserVerifier,
    token: String,
    claims: serde_json::Value,
    timeout: Duration,
) -> Result<serde_json::Value, Refusal> {
    match tokio::time::timeout(timeout, verifier.verify(token, claims)).await {
        Ok(Ok(Some(user))) => Ok(user),
        Ok(Ok(None)) => Err(Refusal::unauthorized("session is not valid")),
        Ok(Err(e)) => {
            warn!("verifyUser failed: {e}");
            Err(Refusal::unauthorized("session could not be verified"))
        }
        Err(_) => Err(Refusal::unauthorized("session could not be verified in time")),
    }
}

/// Why a capped `verifyUser` gave no user.
pub(crate) enum Unverified {
    /// `maxVerifying` ([`Over::Total`]) or `maxVerifyingPerUser` ([`Over::User`]) is full:
    /// the host was not asked.
    Busy(Over),
    /// The host refused, failed, or did not answer within `verifyTimeout`.
    Refused(Refusal),
}

/// [`verify_user`] within `maxVerifying` and `maxVerifyingPerUser`, for handshakes and
/// refreshes alike. A call that times out gives its place back at once, even though the host's
/// promise may never settle: a `verifyUser` that hangs cannot hold the cap.
pub(crate) async fn verify_capped(
    hub: &Hub,
    verifier: &dyn UserVerifier,
    user: &User,
    token: String,
) -> Result<serde_json::Value, Unverified> {
    let place = hub.verifying.begin(&user.key).map_err(|over| {
        Stats::add(&hub.stats.refused_verifying, 1);
        Unverified::Busy(over)
    })?;
    let verified = verify_user(
        verifier,
        token,
        (**user.claims.value()).clone(),
        hub.config.verify_timeout,
    )
    .await;
    drop(place);
    verified.map_err(Unverified::Refused)
}
