//! The user API: `/api/v1/user-webhooks` and everything under it.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, AuthUser};
use super::AppState;
use crate::delivery::client::Outgoing;
use crate::delivery::dispatcher::{attempt_record, verdict};
use crate::delivery::policy::decide;
use crate::domain::filter::{validate_list, validate_min_amount, Filters};
use crate::domain::health::HealthFigures;
use crate::domain::payload::{encode_event, sample_exploit, EVENT_WEBHOOK_TEST};
use crate::domain::secret::{generate_webhook_secret, secret_hint};
use crate::domain::time::{format_ms, now_ms};
use crate::domain::webhook::{validate_name, NewWebhook, Webhook, WebhookPatch, WebhookUrl};
pub use crate::input::{WebhookIn, WebhookPatchIn};
use crate::store::{
    AttemptLog, AttemptResult, ClaimedDelivery, DeliveryRecord, DeliveryStatus, Page, StoreError,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/user-webhooks",
            post(create_webhook).get(list_webhooks),
        )
        .route(
            "/api/v1/user-webhooks/{id}",
            get(get_webhook)
                .patch(update_webhook)
                .delete(delete_webhook),
        )
        .route(
            "/api/v1/user-webhooks/{id}/regenerate-secret",
            post(regenerate_secret),
        )
        .route(
            "/api/v1/user-webhooks/{id}/deliveries",
            get(list_deliveries),
        )
        .route(
            "/api/v1/user-webhooks/{id}/deliveries/{delivery_id}",
            get(get_delivery),
        )
        .route(
            "/api/v1/user-webhooks/{id}/deliveries/{delivery_id}/retry",
            post(retry_delivery),
        )
        .route("/api/v1/user-webhooks/{id}/test", post(test_webhook))
        .route("/api/v1/user-webhooks/{id}/stats", get(webhook_stats))
}

/// Delivery health of a webhook.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthOut {
    /// `healthy`, `degraded`, `failing` or `no_data`.
    pub status: &'static str,
    /// Over the deliveries finished in the last 24 h: those whose last attempt was in
    /// the current hour (UTC) or the 23 before it, the hours of the `stats` chart.
    pub success_rate_24h: Option<f64>,
    pub success_rate_all_time: Option<f64>,
    /// Deliveries finished in the last 24 h, as for `success_rate_24h`.
    pub deliveries_24h: u64,
    /// Mean latency of the last attempts of those deliveries.
    pub mean_latency_ms_24h: Option<f64>,
    pub consecutive_failures: u64,
    /// The latest success; while every attempt succeeds, at most a second behind.
    pub last_success_at: Option<String>,
    pub last_failure_at: Option<String>,
    pub last_error: Option<String>,
}

impl From<HealthFigures> for HealthOut {
    fn from(h: HealthFigures) -> Self {
        HealthOut {
            status: h.status().as_str(),
            success_rate_24h: h.success_rate_24h(),
            success_rate_all_time: h.success_rate_all(),
            deliveries_24h: h.succeeded_24h + h.failed_24h,
            mean_latency_ms_24h: h.mean_latency_ms_24h.map(|v| (v * 10.0).round() / 10.0),
            consecutive_failures: h.consecutive_failures,
            last_success_at: h.last_success_at_ms.map(format_ms),
            last_failure_at: h.last_failure_at_ms.map(format_ms),
            last_error: h.last_error,
        }
    }
}

/// A webhook as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookOut {
    pub id: i64,
    pub name: String,
    pub url: String,
    pub min_amount_usd: Option<f64>,
    pub chains: Option<Vec<String>>,
    pub protocols: Option<Vec<String>>,
    pub categories: Option<Vec<String>>,
    pub is_active: bool,
    /// Why the service deactivated the webhook (e.g. the endpoint answered 410 Gone).
    pub disabled_reason: Option<String>,
    /// The first characters of the secret, to tell secrets apart.
    pub secret_hint: String,
    /// Only in the create answer: save it, it is never shown again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthOut>,
    pub created_at: String,
    pub updated_at: String,
}

impl WebhookOut {
    fn from_webhook(w: Webhook) -> Self {
        WebhookOut {
            id: w.id,
            name: w.name,
            url: w.url,
            min_amount_usd: w.filters.min_amount_usd,
            chains: w.filters.chains,
            protocols: w.filters.protocols,
            categories: w.filters.categories,
            is_active: w.is_active,
            disabled_reason: w.disabled_reason,
            secret_hint: secret_hint(&w.secret),
            secret: None,
            health: None,
            created_at: format_ms(w.created_at_ms),
            updated_at: format_ms(w.updated_at_ms),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookList {
    pub webhooks: Vec<WebhookOut>,
    pub total: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SecretOut {
    /// The new secret; the old one stops working at once.
    pub secret: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveryQuery {
    /// 1-based page number (default 1).
    pub page: Option<String>,
    /// 1 to 100 (default 50).
    pub page_size: Option<String>,
    /// `pending`, `succeeded` or `failed`.
    pub status: Option<String>,
}

/// One delivery of an event to a webhook.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryOut {
    pub id: i64,
    /// Null for test events.
    pub exploit_id: Option<i64>,
    /// `exploit.detected` or `webhook.test`.
    pub event: String,
    /// `pending`, `succeeded` or `failed`.
    pub status: &'static str,
    /// HTTP status of the latest attempt; null before the first or on a connection error.
    pub status_code: Option<i64>,
    /// Time of the first attempt.
    pub sent_at: Option<String>,
    /// Time of the successful attempt.
    pub delivered_at: Option<String>,
    pub attempts: i64,
    /// When the next attempt is due, while pending.
    pub next_attempt_at: Option<String>,
    /// What went wrong in the latest attempt.
    pub error: Option<String>,
    /// Latency of the latest attempt.
    pub latency_ms: Option<i64>,
    pub created_at: String,
}

impl From<DeliveryRecord> for DeliveryOut {
    fn from(d: DeliveryRecord) -> Self {
        DeliveryOut {
            id: d.id,
            exploit_id: d.exploit_id,
            event: d.event,
            status: d.status.as_str(),
            status_code: d.status_code,
            sent_at: d.sent_at_ms.map(format_ms),
            delivered_at: d.delivered_at_ms.map(format_ms),
            attempts: d.attempts,
            next_attempt_at: d.next_attempt_at_ms.map(format_ms),
            error: d.error,
            latency_ms: d.latency_ms,
            created_at: format_ms(d.created_at_ms),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryPage {
    pub deliveries: Vec<DeliveryOut>,
    pub total: u64,
    pub page: u32,
    pub page_size: u32,
}

fn webhook_not_found(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound => ApiError::NotFound("webhook"),
        other => other.into(),
    }
}

/// A URL that passes the syntax rules and, for IP literals, the network guard.
fn checked_url(state: &AppState, raw: &str) -> Result<WebhookUrl, ApiError> {
    let url = WebhookUrl::parse(raw, state.config.allow_http)?;
    state.network.check_url(url.url())?;
    Ok(url)
}

fn filter_list(field: &str, v: Option<Vec<String>>) -> Result<Option<Vec<String>>, ApiError> {
    Ok(match v {
        None => None,
        Some(list) => validate_list(field, list)?,
    })
}

/// Create a webhook. The answer holds the secret: it is never shown again.
#[utoipa::path(post, path = "/api/v1/user-webhooks", tag = "webhooks", request_body = WebhookIn,
    security(("api_key" = [])),
    responses(
        (status = 201, description = "Created; `secret` is shown only now", body = WebhookOut),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 403, description = "Tier limit reached; the message names the tier needed", body = ErrorBody),
        (status = 422, description = "Invalid field; the message names it", body = ErrorBody)))]
pub async fn create_webhook(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ApiJson(body): ApiJson<WebhookIn>,
) -> Result<(StatusCode, Json<WebhookOut>), ApiError> {
    let new = NewWebhook {
        name: validate_name(&body.name)?,
        url: checked_url(&state, &body.url)?,
        filters: Filters {
            min_amount_usd: body.min_amount_usd.map(validate_min_amount).transpose()?,
            chains: filter_list("chains", body.chains)?,
            protocols: filter_list("protocols", body.protocols)?,
            categories: filter_list("categories", body.categories)?,
        },
        is_active: body.is_active.unwrap_or(true),
        secret: generate_webhook_secret(),
    };
    if user.tier.max_webhooks() == 0 {
        return Err(ApiError::TierLimit(user.tier.limit_message()));
    }
    let webhook = state.store.create_webhook(user.id, user.tier, &new).await?;
    tracing::info!(
        webhook_id = webhook.id,
        user_id = user.id,
        "webhook created"
    );
    let mut out = WebhookOut::from_webhook(webhook);
    out.secret = Some(new.secret);
    Ok((StatusCode::CREATED, Json(out)))
}

/// List your webhooks.
#[utoipa::path(get, path = "/api/v1/user-webhooks", tag = "webhooks", security(("api_key" = [])),
    responses((status = 200, body = WebhookList), (status = 401, body = ErrorBody)))]
pub async fn list_webhooks(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<Json<WebhookList>, ApiError> {
    let list = state.store.list_webhooks(user.id).await?;
    let ids: Vec<i64> = list.iter().map(|w| w.id).collect();
    let health = state.store.webhooks_health(&ids, now_ms()).await?;
    let webhooks: Vec<WebhookOut> = list
        .into_iter()
        .zip(health)
        .map(|(webhook, health)| {
            let mut out = WebhookOut::from_webhook(webhook);
            out.health = Some(health.into());
            out
        })
        .collect();
    Ok(Json(WebhookList {
        total: webhooks.len(),
        webhooks,
    }))
}

/// One webhook with its delivery health.
#[utoipa::path(get, path = "/api/v1/user-webhooks/{id}", tag = "webhooks", security(("api_key" = [])),
    params(("id" = i64, Path, description = "Webhook id")),
    responses((status = 200, body = WebhookOut), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_webhook(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> Result<Json<WebhookOut>, ApiError> {
    let id = parse_id(&id)?;
    let webhook = state
        .store
        .get_webhook(user.id, id)
        .await
        .map_err(webhook_not_found)?;
    let health = state.store.webhook_health(id, now_ms()).await?;
    let mut out = WebhookOut::from_webhook(webhook);
    out.health = Some(health.into());
    Ok(Json(out))
}

/// Change a webhook: absent fields stay, `null` clears a filter.
#[utoipa::path(patch, path = "/api/v1/user-webhooks/{id}", tag = "webhooks", request_body = WebhookPatchIn,
    security(("api_key" = [])), params(("id" = i64, Path, description = "Webhook id")),
    responses((status = 200, body = WebhookOut), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn update_webhook(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<WebhookPatchIn>,
) -> Result<Json<WebhookOut>, ApiError> {
    let id = parse_id(&id)?;
    let required = |field: &str| ApiError::validation(field, "cannot be null");
    let patch = WebhookPatch {
        name: match body.name {
            None => None,
            Some(None) => return Err(required("name")),
            Some(Some(n)) => Some(validate_name(&n)?),
        },
        url: match body.url {
            None => None,
            Some(None) => return Err(required("url")),
            Some(Some(u)) => Some(checked_url(&state, &u)?),
        },
        is_active: match body.is_active {
            None => None,
            Some(None) => return Err(required("is_active")),
            Some(v) => v,
        },
        min_amount_usd: body
            .min_amount_usd
            .map(|v| v.map(validate_min_amount).transpose())
            .transpose()?,
        chains: body.chains.map(|v| filter_list("chains", v)).transpose()?,
        protocols: body
            .protocols
            .map(|v| filter_list("protocols", v))
            .transpose()?,
        categories: body
            .categories
            .map(|v| filter_list("categories", v))
            .transpose()?,
    };
    let webhook = state
        .store
        .update_webhook(user.id, id, &patch)
        .await
        .map_err(webhook_not_found)?;
    Ok(Json(WebhookOut::from_webhook(webhook)))
}

/// Delete a webhook; its queued deliveries stop.
#[utoipa::path(delete, path = "/api/v1/user-webhooks/{id}", tag = "webhooks", security(("api_key" = [])),
    params(("id" = i64, Path, description = "Webhook id")),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_webhook(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id)?;
    state
        .store
        .delete_webhook(user.id, id)
        .await
        .map_err(webhook_not_found)?;
    tracing::info!(webhook_id = id, user_id = user.id, "webhook deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Replace the signing secret; the old one stops at once, queued retries included.
#[utoipa::path(post, path = "/api/v1/user-webhooks/{id}/regenerate-secret", tag = "webhooks",
    security(("api_key" = [])), params(("id" = i64, Path, description = "Webhook id")),
    responses((status = 200, body = SecretOut), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn regenerate_secret(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> Result<Json<SecretOut>, ApiError> {
    let id = parse_id(&id)?;
    let secret = generate_webhook_secret();
    state
        .store
        .set_webhook_secret(user.id, id, &secret)
        .await
        .map_err(webhook_not_found)?;
    tracing::info!(
        webhook_id = id,
        user_id = user.id,
        "webhook secret regenerated"
    );
    Ok(Json(SecretOut { secret }))
}

/// A webhook's deliveries, newest first.
#[utoipa::path(get, path = "/api/v1/user-webhooks/{id}/deliveries", tag = "deliveries",
    security(("api_key" = [])), params(("id" = i64, Path, description = "Webhook id"), DeliveryQuery),
    responses((status = 200, body = DeliveryPage), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn list_deliveries(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
    Query(q): Query<DeliveryQuery>,
) -> Result<Json<DeliveryPage>, ApiError> {
    let id = parse_id(&id)?;
    let page = parse_bounded("page", q.page.as_deref(), 1, 1, u32::MAX / 128)?;
    let page_size = parse_bounded("page_size", q.page_size.as_deref(), 50, 1, 100)?;
    let status = match q.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(DeliveryStatus::parse(s).ok_or_else(|| {
            ApiError::validation("status", "must be pending, succeeded or failed")
        })?),
    };
    state
        .store
        .get_webhook(user.id, id)
        .await
        .map_err(webhook_not_found)?;
    let (deliveries, total) = state
        .store
        .list_deliveries(id, status, Page { page, page_size })
        .await?;
    Ok(Json(DeliveryPage {
        deliveries: deliveries.into_iter().map(DeliveryOut::from).collect(),
        total,
        page,
        page_size,
    }))
}

/// Ids that are not numbers cannot name a webhook: 404, like any unknown id.
pub fn parse_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or(ApiError::NotFound("webhook"))
}

fn parse_bounded(
    field: &str,
    raw: Option<&str>,
    default: u32,
    min: u32,
    max: u32,
) -> Result<u32, ApiError> {
    let Some(raw) = raw.filter(|r| !r.is_empty()) else {
        return Ok(default);
    };
    raw.parse::<u32>()
        .ok()
        .filter(|v| (min..=max).contains(v))
        .ok_or_else(|| {
            ApiError::validation(field, format!("must be an integer from {min} to {max}"))
        })
}

/// One attempt of a delivery.
#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptOut {
    pub attempt: i64,
    pub started_at: String,
    /// Null on a timeout or connection error.
    pub status_code: Option<i64>,
    pub latency_ms: i64,
    /// Null on success; otherwise timeout, connect, tls, http_status, redirect, gone,
    /// blocked_address or request.
    pub error_kind: Option<String>,
    pub error: Option<String>,
    /// The first 1 KiB of the endpoint's answer.
    pub response_body: Option<String>,
}

impl From<AttemptLog> for AttemptOut {
    fn from(a: AttemptLog) -> Self {
        AttemptOut {
            attempt: a.attempt,
            started_at: format_ms(a.started_at_ms),
            status_code: a.status_code,
            latency_ms: a.latency_ms,
            error_kind: a.error_kind,
            error: a.error,
            response_body: a.response_body,
        }
    }
}

/// A delivery with the exact body sent and every attempt.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryDetailOut {
    #[serde(flatten)]
    pub delivery: DeliveryOut,
    /// The exact request body, as signed.
    pub payload: String,
    pub attempt_log: Vec<AttemptOut>,
}

fn delivery_not_found(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound => ApiError::NotFound("delivery"),
        other => other.into(),
    }
}

/// One delivery with the body sent and all its attempts.
#[utoipa::path(get, path = "/api/v1/user-webhooks/{id}/deliveries/{delivery_id}", tag = "deliveries",
    security(("api_key" = [])),
    params(("id" = i64, Path, description = "Webhook id"), ("delivery_id" = i64, Path, description = "Delivery id")),
    responses((status = 200, body = DeliveryDetailOut), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_delivery(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path((id, delivery_id)): Path<(String, String)>,
) -> Result<Json<DeliveryDetailOut>, ApiError> {
    let id = parse_id(&id)?;
    state
        .store
        .get_webhook(user.id, id)
        .await
        .map_err(webhook_not_found)?;
    let delivery_id = parse_id(&delivery_id).map_err(|_| ApiError::NotFound("delivery"))?;
    let detail = state
        .store
        .delivery_detail(id, delivery_id)
        .await
        .map_err(delivery_not_found)?;
    Ok(Json(DeliveryDetailOut {
        delivery: detail.delivery.into(),
        payload: detail.payload,
        attempt_log: detail.attempts.into_iter().map(AttemptOut::from).collect(),
    }))
}

/// Send a delivery again now (same delivery id), with a fresh retry schedule.
#[utoipa::path(post, path = "/api/v1/user-webhooks/{id}/deliveries/{delivery_id}/retry", tag = "deliveries",
    security(("api_key" = [])),
    params(("id" = i64, Path, description = "Webhook id"), ("delivery_id" = i64, Path, description = "Delivery id")),
    responses((status = 202, description = "Queued", body = DeliveryOut), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, description = "The webhook is inactive", body = ErrorBody)))]
pub async fn retry_delivery(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path((id, delivery_id)): Path<(String, String)>,
) -> Result<(StatusCode, Json<DeliveryOut>), ApiError> {
    let id = parse_id(&id)?;
    let webhook = state
        .store
        .get_webhook(user.id, id)
        .await
        .map_err(webhook_not_found)?;
    let delivery_id = parse_id(&delivery_id).map_err(|_| ApiError::NotFound("delivery"))?;
    if !webhook.is_active {
        return Err(ApiError::validation(
            "is_active",
            "the webhook is inactive; activate it before retrying deliveries",
        ));
    }
    let record = state
        .store
        .requeue_delivery(id, delivery_id, now_ms())
        .await
        .map_err(delivery_not_found)?;
    state.wake_workers();
    Ok((StatusCode::ACCEPTED, Json(record.into())))
}

/// The answer of a test call.
#[derive(Debug, Serialize, ToSchema)]
pub struct TestOut {
    /// `success` or `failed`.
    pub status: &'static str,
    /// Null on a timeout or connection error.
    pub status_code: Option<u16>,
    pub latency_ms: i64,
    pub error: Option<String>,
    /// The test delivery, in the webhook's delivery log.
    pub delivery_id: i64,
}

/// Send one `webhook.test` event now and report how the endpoint answered.
#[utoipa::path(post, path = "/api/v1/user-webhooks/{id}/test", tag = "webhooks", security(("api_key" = [])),
    params(("id" = i64, Path, description = "Webhook id")),
    responses((status = 200, body = TestOut), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn test_webhook(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> Result<Json<TestOut>, ApiError> {
    let id = parse_id(&id)?;
    let webhook = state
        .store
        .get_webhook(user.id, id)
        .await
        .map_err(webhook_not_found)?;
    let now = now_ms();
    let body = encode_event(EVENT_WEBHOOK_TEST, &sample_exploit(now));
    let lease_until = now + state.config.lease.as_millis() as i64;
    let delivery_id = state
        .store
        .create_test_delivery(id, &body, now, lease_until)
        .await?;
    let claimed = ClaimedDelivery {
        id: delivery_id,
        webhook_id: id,
        url: webhook.url.into(),
        secret: webhook.secret.into(),
        event: EVENT_WEBHOOK_TEST.into(),
        body: body.into(),
        attempt: 1,
        round_attempt: 1,
    };
    let outcome = state
        .sender
        .send(&Outgoing {
            url: &claimed.url,
            secret: &claimed.secret,
            event: &claimed.event,
            delivery_id,
            body: &claimed.body,
        })
        .await;
    // A test is sent once: no retries, whatever the schedule.
    let result = decide(&[], 1, verdict(&outcome), now_ms());
    let answer = TestOut {
        status: if result == AttemptResult::Succeeded {
            "success"
        } else {
            "failed"
        },
        status_code: outcome.status_code,
        latency_ms: outcome.latency_ms,
        error: outcome.error.clone(),
        delivery_id,
    };
    state
        .store
        .record_attempts(&[attempt_record(&claimed, now, outcome, result)])
        .await?;
    Ok(Json(answer))
}

/// The longest window the stats call covers: one week of hours.
pub const MAX_STATS_HOURS: u32 = 168;
const HOUR_MS: i64 = 3_600_000;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatsQuery {
    /// How many hours back, the current one included: 1 to 168 (default 24).
    pub hours: Option<String>,
}

/// One hour of a webhook's delivery attempts.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatsBucket {
    /// Start of the hour, UTC, `YYYY-MM-DDTHH:MM:SS`.
    pub start: String,
    /// Attempts answered with a 2xx in time.
    pub succeeded: u64,
    /// Attempts that failed (error answer, timeout, connection error...).
    pub failed: u64,
    /// Mean latency of the hour's attempts; null for an hour without any.
    pub mean_latency_ms: Option<f64>,
}

/// Delivery attempts per hour, oldest first, empty hours included.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatsOut {
    pub buckets: Vec<StatsBucket>,
    pub hours: u32,
}

/// Builds `hours` hourly buckets ending with the hour holding `now_ms`, from the store's
/// non-empty buckets counted from the first hour's start.
pub fn hourly_buckets(
    hours: u32,
    now_ms: i64,
    found: &[crate::store::AttemptBucket],
) -> Vec<StatsBucket> {
    let first = window_start(hours, now_ms);
    (0..i64::from(hours))
        .map(|i| {
            let hit = found.iter().find(|b| b.index == i);
            StatsBucket {
                start: format_ms(first + i * HOUR_MS),
                succeeded: hit.map_or(0, |b| b.succeeded),
                failed: hit.map_or(0, |b| b.failed),
                mean_latency_ms: hit
                    .and_then(|b| b.mean_latency_ms)
                    .map(|v| (v * 10.0).round() / 10.0),
            }
        })
        .collect()
}

/// Start of the first of `hours` whole hours, the last being the one holding `now_ms`.
fn window_start(hours: u32, now_ms: i64) -> i64 {
    now_ms.div_euclid(HOUR_MS) * HOUR_MS - (i64::from(hours) - 1) * HOUR_MS
}

/// Delivery attempts per hour (succeeded, failed, mean latency) for a chart.
#[utoipa::path(get, path = "/api/v1/user-webhooks/{id}/stats", tag = "deliveries",
    security(("api_key" = [])), params(("id" = i64, Path, description = "Webhook id"), StatsQuery),
    responses((status = 200, body = StatsOut), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn webhook_stats(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
    Query(q): Query<StatsQuery>,
) -> Result<Json<StatsOut>, ApiError> {
    let id = parse_id(&id)?;
    let hours = parse_bounded("hours", q.hours.as_deref(), 24, 1, MAX_STATS_HOURS)?;
    state
        .store
        .get_webhook(user.id, id)
        .await
        .map_err(webhook_not_found)?;
    let now = now_ms();
    let found = state
        .store
        .attempt_buckets(id, window_start(hours, now), HOUR_MS)
        .await?;
    Ok(Json(StatsOut {
        buckets: hourly_buckets(hours, now, &found),
        hours,
    }))
}

#[cfg(test)]
mod stats_tests {
    use super::*;
    use crate::store::AttemptBucket;

    #[test]
    fn hourly_buckets_fill_empty_hours_and_end_with_the_current_one() {
        // 2025-10-10T12:34:56Z
        let now = 1_760_099_696_000;
        let found = [AttemptBucket {
            index: 2,
            succeeded: 3,
            failed: 1,
            mean_latency_ms: Some(12.345),
        }];
        let buckets = hourly_buckets(3, now, &found);
        let starts: Vec<_> = buckets.iter().map(|b| b.start.as_str()).collect();
        assert_eq!(
            starts,
            [
                "2025-10-10T10:00:00",
                "2025-10-10T11:00:00",
                "2025-10-10T12:00:00"
            ]
        );
        assert_eq!((buckets[0].succeeded, buckets[0].failed), (0, 0));
        assert_eq!(buckets[0].mean_latency_ms, None);
        assert_eq!((buckets[2].succeeded, buckets[2].failed), (3, 1));
        assert_eq!(buckets[2].mean_latency_ms, Some(12.3));
    }
}
