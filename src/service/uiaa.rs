//! User-interactive authentication (client-server API, "User-Interactive Authentication API").
//!
//! Every flow this server offers has exactly one stage (`m.login.dummy`,
//! `m.login.registration_token` or `m.login.password`), so a stage is always completed and
//! checked within the single request that carries it. The `session` id we hand out therefore
//! needs no server-side state: it is a random string the client echoes back. When a flow with
//! two stages arrives (terms, e-mail), sessions gain state here, and nowhere else.

use ruma::{
    UserId,
    api::{
        client::uiaa::{AuthData, AuthFlow, AuthType, UiaaInfo, UserIdentifier},
        error::{ErrorKind, StandardErrorBody},
    },
};

use crate::{Error, Result, crypto, service::users::PasswordCheck};

use super::Services;

/// The one stage a request must complete.
pub enum Stage<'a> {
    /// `m.login.dummy`: registration without a token.
    Dummy,
    /// `m.login.registration_token` with the configured token.
    RegistrationToken(&'a str),
    /// `m.login.password` for the user who is making the request.
    Password(&'a UserId),
}

impl Stage<'_> {
    fn auth_type(&self) -> AuthType {
        match self {
            Stage::Dummy => AuthType::Dummy,
            Stage::RegistrationToken(_) => AuthType::RegistrationToken,
            Stage::Password(_) => AuthType::Password,
        }
    }
}

#[derive(Default)]
pub struct Uiaa;

impl Uiaa {
    pub fn new() -> Self {
        Self
    }

    /// Succeeds when `auth` completes `stage`; otherwise answers 401 with the flow (and, if
    /// an attempt failed, the reason in `errcode`/`error`, as the spec describes).
    pub async fn authorize(
        &self,
        services: &Services,
        auth: Option<&AuthData>,
        stage: Stage<'_>,
    ) -> Result<()> {
        let Some(auth) = auth else {
            return Err(challenge(&stage, None, None));
        };
        let session = auth.session().map(str::to_owned);
        if auth.auth_type().as_ref() != Some(&stage.auth_type()) {
            let failure = StandardErrorBody::new(
                ErrorKind::Forbidden,
                format!("This request needs the {} stage.", stage.auth_type()),
            );
            return Err(challenge(&stage, session, Some(failure)));
        }
        match (&stage, auth) {
            (Stage::Dummy, AuthData::Dummy(_)) => Ok(()),
            (Stage::RegistrationToken(expected), AuthData::RegistrationToken(given)) => {
                if services.registration.check_token(&given.token, expected)? {
                    Ok(())
                } else {
                    let failure = StandardErrorBody::new(
                        ErrorKind::Forbidden,
                        "Invalid registration token.".to_owned(),
                    );
                    Err(challenge(&stage, session, Some(failure)))
                }
            }
            (Stage::Password(user_id), AuthData::Password(password)) => {
                let named = match &password.identifier {
                    UserIdentifier::Matrix(id) => services
                        .registration
                        .user_id_from_login(&id.user, &services.config),
                    _ => None,
                };
                if named.as_deref() != Some(*user_id) {
                    let failure = StandardErrorBody::new(
                        ErrorKind::Forbidden,
                        "The identifier does not match the logged-in user.".to_owned(),
                    );
                    return Err(challenge(&stage, session, Some(failure)));
                }
                if let Err(wait) = services.password_failures.check(user_id.as_str()) {
                    return Err(Error::limit_exceeded(wait));
                }
                match services
                    .users
                    .check_password(user_id, &password.password)
                    .await?
                {
                    PasswordCheck::Valid => {
                        services.password_failures.reset(user_id.as_str());
                        Ok(())
                    }
                    _ => {
                        services.password_failures.record_failure(user_id.as_str());
                        let failure = StandardErrorBody::new(
                            ErrorKind::Forbidden,
                            "Invalid password.".to_owned(),
                        );
                        Err(challenge(&stage, session, Some(failure)))
                    }
                }
            }
            _ => Err(Error::bad_json("The auth data does not match its type.")),
        }
    }
}

/// The 401 answer: the one flow, a session id, and the failure of the last attempt if any.
fn challenge(
    stage: &Stage<'_>,
    session: Option<String>,
    failure: Option<StandardErrorBody>,
) -> Error {
    let mut info = UiaaInfo::new(vec![AuthFlow::new(vec![stage.auth_type()])]);
    info.session = Some(session.unwrap_or_else(crypto::random_token));
    info.auth_error = failure;
    Error::Uiaa(Box::new(info))
}
