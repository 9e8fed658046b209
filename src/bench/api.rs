//! The bench's client of the service's HTTP API: users, webhooks, exploit ingestion and
//! delivery-log pages, each call's failure described with the service's own answer.

use anyhow::{bail, Context};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use reqwest::Method;
use serde_json::{json, Value};

pub struct Api {
    base_url: String,
    admin_token: String,
    client: reqwest::Client,
}

/// A webhook as created: its id and its secret (shown only in this answer).
#[derive(Debug, Clone)]
pub struct CreatedWebhook {
    pub id: i64,
    pub secret: String,
}

impl Api {
    pub fn new(base_url: String, admin_token: String) -> anyhow::Result<Api> {
        let client = reqwest::Client::builder()
            .tcp_nodelay(true)
            .build()
            .context("building the API client")?;
        Ok(Api {
            base_url,
            admin_token,
            client,
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        bearer: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Value> {
        let mut request = self
            .client
            .request(method.clone(), format!("{}{path}", self.base_url))
            .header(AUTHORIZATION, format!("Bearer {bearer}"));
        if let Some(body) = body {
            request = request.header(CONTENT_TYPE, "application/json").body(body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .with_context(|| format!("{method} {path}: reading the answer"))?;
        if !status.is_success() {
            bail!(
                "{method} {path} answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        serde_json::from_slice(&bytes)
            .with_context(|| format!("{method} {path}: the answer is not JSON"))
    }

    /// An enterprise user (50 webhooks); returns its API key.
    pub async fn create_user(&self, name: &str) -> anyhow::Result<String> {
        let body = json!({"name": name, "tier": "enterprise"});
        let answer = self
            .call(
                Method::POST,
                "/api/v1/admin/users",
                &self.admin_token,
                Some(serde_json::to_vec(&body)?),
            )
            .await?;
        answer["api_key"]
            .as_str()
            .map(String::from)
            .context("the create-user answer has no api_key")
    }

    /// A webhook delivering exploits of `chain` to `url`.
    pub async fn create_webhook(
        &self,
        api_key: &str,
        name: &str,
        url: &str,
        chain: &str,
    ) -> anyhow::Result<CreatedWebhook> {
        // The chain filter keeps webhooks of earlier runs on a shared (PostgreSQL) database
        // out of this run: each run ingests on a chain of its own.
        let body = json!({"name": name, "url": url, "chains": [chain]});
        let answer = self
            .call(
                Method::POST,
                "/api/v1/user-webhooks",
                api_key,
                Some(serde_json::to_vec(&body)?),
            )
            .await?;
        Ok(CreatedWebhook {
            id: answer["id"]
                .as_i64()
                .context("the create-webhook answer has no id")?,
            secret: answer["secret"]
                .as_str()
                .context("the create-webhook answer has no secret")?
                .to_owned(),
        })
    }

    /// Ingests a batch; returns the deliveries it queued. Any rejected exploit is an error.
    pub async fn ingest(&self, body: Vec<u8>) -> anyhow::Result<u64> {
        let answer = self
            .call(
                Method::POST,
                "/api/v1/exploits",
                &self.admin_token,
                Some(body),
            )
            .await?;
        let results = answer["results"]
            .as_array()
            .context("the ingest answer has no results")?;
        let mut queued = 0;
        for r in results {
            if let Some(e) = r.get("error") {
                bail!("the service rejected an exploit: {e}");
            }
            queued += r["matched"].as_u64().unwrap_or(0);
        }
        Ok(queued)
    }

    /// One page of a webhook's delivery log.
    pub async fn list_deliveries(
        &self,
        api_key: &str,
        webhook_id: i64,
        page: u32,
        page_size: u32,
    ) -> anyhow::Result<Value> {
        self.call(
            Method::GET,
            &format!(
                "/api/v1/user-webhooks/{webhook_id}/deliveries?page={page}&page_size={page_size}"
            ),
            api_key,
            None,
        )
        .await
    }
}
