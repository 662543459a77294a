//! Push rules (kept by `service::push` as the `m.push_rules` account data, starting from
//! the spec's server-default rules) and pushers.
//!
//! Every rule endpoint takes any of the five kinds and any rule id, the server-default
//! `.m.rule.*` ids included: those can be read, enabled or disabled and given other
//! actions, but not added, moved or deleted (client-server API, "Push Rules: API").

use std::sync::Arc;

use axum::extract::State;
use ruma::{
    api::{
        client::push::{
            RuleKind, delete_pushrule, get_pushers, get_pushrule, get_pushrule_actions,
            get_pushrule_enabled, get_pushrules_all, get_pushrules_global_scope, set_pusher,
            set_pushrule, set_pushrule_actions, set_pushrule_enabled,
        },
        error::ErrorKind,
    },
    push::{InsertPushRuleError, RemovePushRuleError, Ruleset},
};

use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse},
    service::{Services, push},
};

fn not_found() -> Error {
    Error::not_found("No such push rule.")
}

/// The kind from the path, if it is one of the spec's five (ruma keeps any other string).
fn known_kind(kind: &RuleKind) -> Result<RuleKind> {
    match kind {
        RuleKind::Override
        | RuleKind::Underride
        | RuleKind::Sender
        | RuleKind::Room
        | RuleKind::Content => Ok(kind.clone()),
        _ => Err(Error::invalid_param(format!(
            "Unknown push rule kind {kind:?}: use override, content, room, sender or underride."
        ))),
    }
}

fn ruleset(services: &Services, user_id: &ruma::UserId) -> Result<Arc<Ruleset>> {
    services.push.ruleset(&services.account_data, user_id)
}

/// `GET /_matrix/client/v3/pushrules/`
pub async fn get_pushrules_all(
    State(services): State<Arc<Services>>,
    request: Ruma<get_pushrules_all::v3::Request>,
) -> Result<RumaResponse<get_pushrules_all::v3::Response>> {
    let (sender, _) = request.sender()?;
    let rules = ruleset(&services, sender)?;
    Ok(RumaResponse(get_pushrules_all::v3::Response::new(
        (*rules).clone(),
    )))
}

/// `GET /_matrix/client/v3/pushrules/global/`
pub async fn get_pushrules_global_scope(
    State(services): State<Arc<Services>>,
    request: Ruma<get_pushrules_global_scope::v3::Request>,
) -> Result<RumaResponse<get_pushrules_global_scope::v3::Response>> {
    let (sender, _) = request.sender()?;
    let rules = ruleset(&services, sender)?;
    Ok(RumaResponse(get_pushrules_global_scope::v3::Response::new(
        (*rules).clone(),
    )))
}

/// `GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}`
pub async fn get_pushrule(
    State(services): State<Arc<Services>>,
    request: Ruma<get_pushrule::v3::Request>,
) -> Result<RumaResponse<get_pushrule::v3::Response>> {
    let (sender, _) = request.sender()?;
    let kind = known_kind(&request.body.kind)?;
    let rules = ruleset(&services, sender)?;
    let rule = rules
        .get(kind, &request.body.rule_id)
        .ok_or_else(not_found)?;
    Ok(RumaResponse(get_pushrule::v3::Response::new(rule.into())))
}

/// `PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}`: adds a user-defined rule, or
/// replaces one (keeping whether it is enabled). ruma has already checked the body against
/// the kind, and that the rule id of a `room` or `sender` rule is a room or user id
/// (`400 M_INVALID_PARAM` otherwise): the spec says it "is always" one ("Push Rules",
/// kinds of rule). Synapse accepts any string there, as a glob on the room or user id.
pub async fn set_pushrule(
    State(services): State<Arc<Services>>,
    request: Ruma<set_pushrule::v3::Request>,
) -> Result<RumaResponse<set_pushrule::v3::Response>> {
    let (sender, _) = request.sender()?;
    let sender = sender.clone();
    let body = request.body;
    services
        .push
        .change_rules(&services.account_data, &sender, |rules| {
            push::insert_rule(
                rules,
                body.rule,
                body.after.as_deref(),
                body.before.as_deref(),
            )
            .map_err(insert_error)
        })
        .await?;
    Ok(RumaResponse(set_pushrule::v3::Response::new()))
}

/// Rule ids are checked like Synapse does: a reserved or malformed id is `400`, and so is
/// a `before`/`after` that names no user-defined rule of the kind (the spec's example
/// answers that with `M_UNKNOWN`).
fn insert_error(error: InsertPushRuleError) -> Error {
    match error {
        InsertPushRuleError::ServerDefaultRuleId => Error::invalid_param(
            "Rule ids starting with '.' are reserved for server-default rules.",
        ),
        InsertPushRuleError::InvalidRuleId => {
            Error::invalid_param("Rule ids may not contain '/' or '\\'.")
        }
        InsertPushRuleError::RelativeToServerDefaultRule => Error::bad_request(
            ErrorKind::Unknown,
            "A rule cannot be placed relative to a server-default rule.",
        ),
        InsertPushRuleError::UnknownRuleId => {
            Error::bad_request(ErrorKind::Unknown, "The before/after rule was not found.")
        }
        InsertPushRuleError::BeforeHigherThanAfter => Error::bad_request(
            ErrorKind::Unknown,
            "The before rule comes before the after rule.",
        ),
        other => Error::bad_request(ErrorKind::Unknown, other.to_string()),
    }
}

/// `DELETE /_matrix/client/v3/pushrules/global/{kind}/{ruleId}`: user-defined rules only.
/// A server-default rule is answered as Synapse does, `404` (it can be disabled instead).
pub async fn delete_pushrule(
    State(services): State<Arc<Services>>,
    request: Ruma<delete_pushrule::v3::Request>,
) -> Result<RumaResponse<delete_pushrule::v3::Response>> {
    let (sender, _) = request.sender()?;
    let kind = known_kind(&request.body.kind)?;
    let rule_id = &request.body.rule_id;
    services
        .push
        .change_rules(&services.account_data, sender, |rules| {
            rules.remove(kind, rule_id).map_err(|error| match error {
                RemovePushRuleError::ServerDefault => Error::not_found(
                    "Server-default push rules cannot be deleted; disable them instead.",
                ),
                _ => not_found(),
            })
        })
        .await?;
    Ok(RumaResponse(delete_pushrule::v3::Response::new()))
}

/// `GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/enabled`
pub async fn get_pushrule_enabled(
    State(services): State<Arc<Services>>,
    request: Ruma<get_pushrule_enabled::v3::Request>,
) -> Result<RumaResponse<get_pushrule_enabled::v3::Response>> {
    let (sender, _) = request.sender()?;
    let kind = known_kind(&request.body.kind)?;
    let rules = ruleset(&services, sender)?;
    let rule = rules
        .get(kind, &request.body.rule_id)
        .ok_or_else(not_found)?;
    Ok(RumaResponse(get_pushrule_enabled::v3::Response::new(
        rule.enabled(),
    )))
}

/// `PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/enabled`
pub async fn set_pushrule_enabled(
    State(services): State<Arc<Services>>,
    request: Ruma<set_pushrule_enabled::v3::Request>,
) -> Result<RumaResponse<set_pushrule_enabled::v3::Response>> {
    let (sender, _) = request.sender()?;
    let kind = known_kind(&request.body.kind)?;
    let body = &request.body;
    services
        .push
        .change_rules(&services.account_data, sender, |rules| {
            rules
                .set_enabled(kind, &body.rule_id, body.enabled)
                .map_err(|_| not_found())
        })
        .await?;
    Ok(RumaResponse(set_pushrule_enabled::v3::Response::new()))
}

/// `GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/actions`
pub async fn get_pushrule_actions(
    State(services): State<Arc<Services>>,
    request: Ruma<get_pushrule_actions::v3::Request>,
) -> Result<RumaResponse<get_pushrule_actions::v3::Response>> {
    let (sender, _) = request.sender()?;
    let kind = known_kind(&request.body.kind)?;
    let rules = ruleset(&services, sender)?;
    let rule = rules
        .get(kind, &request.body.rule_id)
        .ok_or_else(not_found)?;
    Ok(RumaResponse(get_pushrule_actions::v3::Response::new(
        rule.actions().to_vec(),
    )))
}

/// `PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/actions`
pub async fn set_pushrule_actions(
    State(services): State<Arc<Services>>,
    request: Ruma<set_pushrule_actions::v3::Request>,
) -> Result<RumaResponse<set_pushrule_actions::v3::Response>> {
    let (sender, _) = request.sender()?;
    let kind = known_kind(&request.body.kind)?;
    let body = &request.body;
    services
        .push
        .change_rules(&services.account_data, sender, |rules| {
            rules
                .set_actions(kind, &body.rule_id, body.actions.clone())
                .map_err(|_| not_found())
        })
        .await?;
    Ok(RumaResponse(set_pushrule_actions::v3::Response::new()))
}

/// `GET /_matrix/client/v3/pushers`
pub async fn get_pushers(
    State(services): State<Arc<Services>>,
    request: Ruma<get_pushers::v3::Request>,
) -> Result<RumaResponse<get_pushers::v3::Response>> {
    let (sender, _) = request.sender()?;
    let pushers = services
        .account_data
        .pushers(sender)?
        .into_iter()
        .filter_map(|pusher| serde_json::from_value(pusher).ok())
        .collect();
    Ok(RumaResponse(get_pushers::v3::Response::new(pushers)))
}

/// `POST /_matrix/client/v3/pushers/set`
pub async fn set_pusher(
    State(services): State<Arc<Services>>,
    request: Ruma<set_pusher::v3::Request>,
) -> Result<RumaResponse<set_pusher::v3::Response>> {
    let (sender, _) = request.sender()?;
    match &request.body.action {
        set_pusher::v3::PusherAction::Post(data) => {
            let ids = &data.pusher.ids;
            if let ruma::api::client::push::PusherKind::Http(http) = &data.pusher.kind {
                crate::service::pusher::validate_gateway_url(&http.url)?;
            }
            let value =
                serde_json::to_value(&data.pusher).map_err(|e| Error::bad_json(e.to_string()))?;
            services
                .account_data
                .set_pusher(sender, &ids.app_id, &ids.pushkey, Some(value))
                .await?;
        }
        set_pusher::v3::PusherAction::Delete(ids) => {
            services
                .account_data
                .set_pusher(sender, &ids.app_id, &ids.pushkey, None)
                .await?;
        }
        _ => return Err(Error::bad_json("Unknown pusher action.")),
    }
    Ok(RumaResponse(set_pusher::v3::Response::new()))
}
