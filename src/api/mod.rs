//! The HTTP API: routes, shared state, OpenAPI document and docs page.

pub mod admin;
pub mod dashboard;
pub mod error;
pub mod exploits;
pub mod extract;
pub mod ops;
pub mod ratelimit;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::Router;
use tokio::sync::Notify;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use crate::config::Config;
use crate::delivery::Sender;
use crate::domain::netguard::NetworkPolicy;
use crate::store::Store;
use error::ApiError;
use ratelimit::RateLimiter;

/// How long a request may take before the server answers 408.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub config: Arc<Config>,
    /// Woken when new deliveries are queued, so workers start without polling delay.
    pub wake: Arc<Notify>,
    /// The outbound client, for test calls made from the API.
    pub sender: Arc<Sender>,
    /// Which addresses webhooks may target.
    pub network: Arc<NetworkPolicy>,
    /// Per-API-key request budget of the user API.
    pub limiter: Arc<RateLimiter>,
}

impl AppState {
    pub fn wake_workers(&self) {
        self.wake.notify_waiters();
        self.wake.notify_one();
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "kamiyo-webhooks",
        description = "Signed, retried and logged webhook delivery of crypto exploit alerts.\n\n\
User calls carry `Authorization: Bearer API_KEY`; operator calls carry `Authorization: Bearer KAMIYO_ADMIN_TOKEN`. \
Every error has the shape `{\"error\":{\"code\":\"...\",\"message\":\"...\"}}`."
    ),
    paths(
        webhooks::create_webhook,
        webhooks::list_webhooks,
        webhooks::get_webhook,
        webhooks::update_webhook,
        webhooks::delete_webhook,
        webhooks::regenerate_secret,
        webhooks::list_deliveries,
        webhooks::get_delivery,
        webhooks::retry_delivery,
        webhooks::test_webhook,
        webhooks::webhook_stats,
        exploits::ingest,
        admin::create_user,
        admin::list_users,
        admin::get_user,
        admin::update_user,
        admin::create_api_key,
        ops::healthz,
        ops::readyz,
        ops::metrics,
    ),
    modifiers(&SecurityAddon),
    tags(
        (name = "webhooks", description = "Manage your webhook endpoints"),
        (name = "deliveries", description = "What was sent, when, and how it went"),
        (name = "operator", description = "Accounts and exploit ingestion (operator token)"),
        (name = "operations", description = "Liveness, readiness and metrics")
    )
)]
pub struct ApiDoc;

struct SecurityAddon;

impl Modify for SecurityAddon {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for name in ["api_key", "admin_token"] {
            components.add_security_scheme(
                name,
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

async fn not_found() -> ApiError {
    ApiError::NotFound("route")
}

/// The whole HTTP application.
pub fn app(state: AppState) -> Router {
    let max_body = state.config.max_body_bytes;
    Router::new()
        .merge(webhooks::router())
        .merge(dashboard::router())
        .merge(admin::router())
        .merge(exploits::router())
        .merge(ops::router())
        .merge(
            SwaggerUi::new("/api/v1/user-webhooks/docs")
                .url("/api/v1/user-webhooks/openapi.json", ApiDoc::openapi()),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
