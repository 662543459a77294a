//! Push rules (stored as the `m.push_rules` account data, starting from the spec's default
//! server rule set) and pushers. Evaluating rules for notification counts and delivering to
//! push gateways are not implemented yet.

use std::sync::Arc;

use axum::extract::State;
use ruma::{
    UserId,
    api::client::push::{
        delete_pushrule, get_pushers, get_pushrule, get_pushrule_enabled, get_pushrules_all,
        set_pusher, set_pushrule, set_pushrule_actions, set_pushrule_enabled,
    },
    push::Ruleset,
};
use serde_json::json;

use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse},
    service::Services,
};

const PUSH_RULES: &str = "m.push_rules";

fn ruleset(services: &Services, user_id: &UserId) -> Result<Ruleset> {
    match services.account_data.get(user_id, None, PUSH_RULES)? {
        Some(stored) => serde_json::from_value(stored["global"].clone())
            .map_err(|_| Error::internal("stored push rules are invalid")),
        None => Ok(Ruleset::server_default(user_id)),
    }
}

async fn store(services: &Services, user_id: &UserId, ruleset: &Ruleset) -> Result<()> {
    services
        .account_data
        .set(user_id, None, PUSH_RULES, json!({ "global": ruleset }))
        .await?;
    services.push.rules_changed(user_id);
    Ok(())
}

fn not_found() -> Error {
    Error::not_found("No such push rule.")
}

/// `GET /_matrix/client/v3/pushrules/`
pub async fn get_pushrules_all(
    State(services): State<Arc<Services>>,
    request: Ruma<get_pushrules_all::v3::Request>,
) -> Result<RumaResponse<get_pushrules_all::v3::Response>> {
    let (sender, _) = request.sender()?;
    Ok(RumaResponse(get_pushrules_all::v3::Response::new(ruleset(
        &services, sender,
    )?)))
}

/// `GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}`
pub async fn get_pushrule(
    State(services): State<Arc<Services>>,
    request: Ruma<get_pushrule::v3::Request>,
) -> Result<RumaResponse<get_pushrule::v3::Response>> {
    let (sender, _) = request.sender()?;
    let rules = ruleset(&services, sender)?;
    let rule = rules
        .get(request.body.kind.clone(), &request.body.rule_id)
        .ok_or_else(not_found)?;
    Ok(RumaResponse(get_pushrule::v3::Response::new(rule.into())))
}

/// `PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}`
pub async fn set_pushrule(
    State(services): State<Arc<Services>>,
    request: Ruma<set_pushrule::v3::Request>,
) -> Result<RumaResponse<set_pushrule::v3::Response>> {
    let (sender, _) = request.sender()?;
    let body = &request.body;
    let mut rules = ruleset(&services, sender)?;
    rules
        .insert(
            body.rule.clone(),
            body.after.as_deref(),
            body.before.as_deref(),
        )
        .map_err(|e| Error::invalid_param(format!("Cannot add this rule: {e}")))?;
    store(&services, sender, &rules).await?;
    Ok(RumaResponse(set_pushrule::v3::Response::new()))
}

/// `DELETE /_matrix/client/v3/pushrules/global/{kind}/{ruleId}`
pub async fn delete_pushrule(
    State(services): State<Arc<Services>>,
    request: Ruma<delete_pushrule::v3::Request>,
) -> Result<RumaResponse<delete_pushrule::v3::Response>> {
    let (sender, _) = request.sender()?;
    let mut rules = ruleset(&services, sender)?;
    rules
        .remove(request.body.kind.clone(), &request.body.rule_id)
        .map_err(|_| not_found())?;
    store(&services, sender, &rules).await?;
    Ok(RumaResponse(delete_pushrule::v3::Response::new()))
}

/// `GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/enabled`
pub async fn get_pushrule_enabled(
    State(services): State<Arc<Services>>,
    request: Ruma<get_pushrule_enabled::v3::Request>,
) -> Result<RumaResponse<get_pushrule_enabled::v3::Response>> {
    let (sender, _) = request.sender()?;
    let rules = ruleset(&services, sender)?;
    let rule = rules
        .get(request.body.kind.clone(), &request.body.rule_id)
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
    let body = &request.body;
    let mut rules = ruleset(&services, sender)?;
    rules
        .set_enabled(body.kind.clone(), &body.rule_id, body.enabled)
        .map_err(|_| not_found())?;
    store(&services, sender, &rules).await?;
    Ok(RumaResponse(set_pushrule_enabled::v3::Response::new()))
}

/// `PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/actions`
pub async fn set_pushrule_actions(
    State(services): State<Arc<Services>>,
    request: Ruma<set_pushrule_actions::v3::Request>,
) -> Result<RumaResponse<set_pushrule_actions::v3::Response>> {
    let (sender, _) = request.sender()?;
    let body = &request.body;
    let mut rules = ruleset(&services, sender)?;
    rules
        .set_actions(body.kind.clone(), &body.rule_id, body.actions.clone())
        .map_err(|_| not_found())?;
    store(&services, sender, &rules).await?;
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
