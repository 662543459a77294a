//! Delivery of notifications to push gateways (push gateway API, `POST
//! /_matrix/push/v1/notify`) for users' `http` pushers. Deliveries wait in a bounded queue and
//! run with bounded concurrency; a failing gateway is retried with exponential backoff a
//! bounded number of times; pushkeys a gateway reports as rejected are removed.

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use ruma::{OwnedUserId, UserId};
use serde_json::{Value as JsonValue, json};
use tokio::sync::{Semaphore, mpsc};

use super::account_data::AccountData;
use crate::{Error, Result};

const QUEUE: usize = 1_000;
const CONCURRENT: usize = 16;
const ATTEMPTS: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const TIMEOUT: Duration = Duration::from_secs(10);
/// Spec (push gateway API, pusher `data.url`): the path every gateway URL must have.
pub const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";

struct Job {
    url: String,
    body: JsonValue,
    user: OwnedUserId,
    app_id: String,
    pushkey: String,
}

pub struct Delivery {
    /// Built on first use: loading the system's certificates costs memory a server without
    /// pushers never needs.
    http: OnceLock<reqwest::Client>,
    account_data: Arc<AccountData>,
    /// Started on first use, inside the runtime.
    queue: OnceLock<mpsc::Sender<Job>>,
}

/// Checks a pusher's gateway URL: HTTPS, with the notify path (spec: "MUST be an HTTPS URL
/// with a path of /_matrix/push/v1/notify"). This also keeps the server from posting to
/// arbitrary plain-HTTP services on behalf of users.
pub fn validate_gateway_url(url: &str) -> Result<()> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|_| Error::invalid_param("The pusher URL is not a URL."))?;
    if parsed.scheme() != "https" || parsed.path() != NOTIFY_PATH {
        return Err(Error::invalid_param(format!(
            "Push gateway URLs must be https://…{NOTIFY_PATH}."
        )));
    }
    Ok(())
}

impl Delivery {
    pub fn new(account_data: Arc<AccountData>) -> Result<Self> {
        Ok(Self {
            http: OnceLock::new(),
            account_data,
            queue: OnceLock::new(),
        })
    }

    fn sender(&self) -> Result<&mpsc::Sender<Job>> {
        if self.http.get().is_none() {
            let http = reqwest::Client::builder()
                .timeout(TIMEOUT)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| Error::internal(format!("HTTP client: {e}")))?;
            let _ = self.http.set(http);
        }
        let http = self.http.get().expect("set above").clone();
        Ok(self.queue.get_or_init(|| {
            let (sender, receiver) = mpsc::channel(QUEUE);
            tokio::spawn(run(receiver, http, Arc::clone(&self.account_data)));
            sender
        }))
    }

    /// Whether `user` has any pusher (most users of a small server have none).
    pub fn has_pushers(&self, user: &UserId) -> Result<bool> {
        Ok(!self.account_data.pushers(user)?.is_empty())
    }

    /// Queues the notification `notification` for each of `user`'s http pushers.
    pub fn notify(&self, user: &UserId, notification: &JsonValue) -> Result<()> {
        for pusher in self.account_data.pushers(user)? {
            if pusher["kind"] != "http" {
                continue;
            }
            let Some(url) = pusher["data"]["url"].as_str() else {
                continue;
            };
            let mut data = pusher["data"].clone();
            if let Some(data) = data.as_object_mut() {
                data.remove("url");
            }
            let mut body = notification.clone();
            if pusher["data"]["format"] == "event_id_only" {
                for key in [
                    "content",
                    "sender_display_name",
                    "room_name",
                    "room_alias",
                    "type",
                    "sender",
                ] {
                    if let Some(object) = body.as_object_mut() {
                        object.remove(key);
                    }
                }
            }
            body["devices"] = json!([{
                "app_id": pusher["app_id"],
                "pushkey": pusher["pushkey"],
                "data": data,
                "tweaks": notification.get("tweaks").cloned().unwrap_or_else(|| json!({})),
            }]);
            if let Some(object) = body.as_object_mut() {
                object.remove("tweaks");
            }
            let job = Job {
                url: url.to_owned(),
                body: json!({ "notification": body }),
                user: user.to_owned(),
                app_id: pusher["app_id"].as_str().unwrap_or_default().to_owned(),
                pushkey: pusher["pushkey"].as_str().unwrap_or_default().to_owned(),
            };
            if self.sender()?.try_send(job).is_err() {
                tracing::warn!(%user, "push queue full; notification dropped");
            }
        }
        Ok(())
    }
}

async fn run(mut jobs: mpsc::Receiver<Job>, http: reqwest::Client, account_data: Arc<AccountData>) {
    let slots = Arc::new(Semaphore::new(CONCURRENT));
    while let Some(job) = jobs.recv().await {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let (http, account_data) = (http.clone(), Arc::clone(&account_data));
        tokio::spawn(async move {
            deliver(&http, &account_data, job).await;
            drop(permit);
        });
    }
}

async fn deliver(http: &reqwest::Client, account_data: &AccountData, job: Job) {
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=ATTEMPTS {
        match http.post(&job.url).json(&job.body).send().await {
            Ok(response) if response.status().is_success() => {
                let answer: JsonValue = response.json().await.unwrap_or_default();
                let rejected = answer["rejected"]
                    .as_array()
                    .is_some_and(|keys| keys.iter().any(|k| k == job.pushkey.as_str()));
                if rejected {
                    tracing::info!(user = %job.user, app_id = %job.app_id, "push gateway rejected a pushkey; pusher removed");
                    if let Err(error) = account_data
                        .set_pusher(&job.user, &job.app_id, &job.pushkey, None)
                        .await
                    {
                        tracing::warn!(%error, "could not remove a rejected pusher");
                    }
                }
                return;
            }
            Ok(response) if response.status().is_client_error() => {
                tracing::warn!(status = %response.status(), "push gateway refused a notification");
                return;
            }
            Ok(response) => {
                tracing::debug!(attempt, status = %response.status(), "push gateway failed")
            }
            Err(error) => tracing::debug!(attempt, %error, "push gateway unreachable"),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }
    tracing::warn!(user = %job.user, "notification not delivered after retries");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_urls_must_be_https_with_the_notify_path() {
        assert!(validate_gateway_url("https://push.example.org/_matrix/push/v1/notify").is_ok());
        assert!(validate_gateway_url("http://push.example.org/_matrix/push/v1/notify").is_err());
        assert!(validate_gateway_url("https://push.example.org/admin").is_err());
        assert!(validate_gateway_url("not a url").is_err());
    }
}
