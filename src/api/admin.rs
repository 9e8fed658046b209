//! The operator API: accounts and API keys, behind `KAMIYO_ADMIN_TOKEN`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{patch, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, Operator};
use super::AppState;
use crate::domain::secret::{generate_api_key, hash_api_key};
use crate::domain::tier::Tier;
use crate::domain::time::format_ms;
use crate::store::{StoreError, User};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/admin/users", post(create_user).get(list_users))
        .route("/api/v1/admin/users/{id}", patch(update_user).get(get_user))
        .route("/api/v1/admin/users/{id}/api-keys", post(create_api_key))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserIn {
    pub name: String,
    /// free, pro, team or enterprise.
    #[schema(example = "team")]
    pub tier: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserPatchIn {
    pub name: Option<String>,
    pub tier: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserOut {
    pub id: i64,
    pub name: String,
    /// free, pro, team or enterprise.
    #[schema(value_type = String, example = "team")]
    pub tier: Tier,
    pub created_at: String,
}

impl From<User> for UserOut {
    fn from(u: User) -> Self {
        UserOut {
            id: u.id,
            name: u.name,
            tier: u.tier,
            created_at: format_ms(u.created_at_ms),
        }
    }
}

/// A new user and its first API key, shown only now.
#[derive(Debug, Serialize, ToSchema)]
pub struct NewUserOut {
    pub id: i64,
    pub name: String,
    /// free, pro, team or enterprise.
    #[schema(value_type = String, example = "team")]
    pub tier: Tier,
    pub api_key: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyOut {
    /// Shown only now; only its hash is stored.
    pub api_key: String,
}

pub fn parse_tier(raw: &str) -> Result<Tier, ApiError> {
    raw.parse()
        .map_err(|m: String| ApiError::validation("tier", m))
}

pub fn validate_user_name(raw: &str) -> Result<String, ApiError> {
    let name = raw.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(ApiError::validation(
            "name",
            "must be 1 to 100 characters without control characters",
        ));
    }
    Ok(name.to_string())
}

fn user_not_found(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound => ApiError::NotFound("user"),
        other => other.into(),
    }
}

fn parse_user_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse().map_err(|_| ApiError::NotFound("user"))
}

/// Create a user with a first API key.
#[utoipa::path(post, path = "/api/v1/admin/users", tag = "operator", request_body = UserIn,
    security(("admin_token" = [])),
    responses((status = 201, body = NewUserOut), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn create_user(
    State(state): State<AppState>,
    _: Operator,
    ApiJson(body): ApiJson<UserIn>,
) -> Result<(StatusCode, Json<NewUserOut>), ApiError> {
    let name = validate_user_name(&body.name)?;
    let tier = parse_tier(&body.tier)?;
    let api_key = generate_api_key();
    let user = state
        .store
        .create_user(&name, tier, &hash_api_key(&api_key))
        .await?;
    tracing::info!(user_id = user.id, tier = %tier, "user created");
    Ok((
        StatusCode::CREATED,
        Json(NewUserOut {
            id: user.id,
            name: user.name,
            tier: user.tier,
            api_key,
        }),
    ))
}

/// List users.
#[utoipa::path(get, path = "/api/v1/admin/users", tag = "operator", security(("admin_token" = [])),
    responses((status = 200, body = Vec<UserOut>), (status = 401, body = ErrorBody)))]
pub async fn list_users(
    State(state): State<AppState>,
    _: Operator,
) -> Result<Json<Vec<UserOut>>, ApiError> {
    Ok(Json(
        state
            .store
            .list_users()
            .await?
            .into_iter()
            .map(UserOut::from)
            .collect(),
    ))
}

/// One user.
#[utoipa::path(get, path = "/api/v1/admin/users/{id}", tag = "operator", security(("admin_token" = [])),
    params(("id" = i64, Path)),
    responses((status = 200, body = UserOut), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_user(
    State(state): State<AppState>,
    _: Operator,
    Path(id): Path<String>,
) -> Result<Json<UserOut>, ApiError> {
    let id = parse_user_id(&id)?;
    Ok(Json(
        state
            .store
            .get_user(id)
            .await
            .map_err(user_not_found)?
            .into(),
    ))
}

/// Change a user's name or tier.
#[utoipa::path(patch, path = "/api/v1/admin/users/{id}", tag = "operator", request_body = UserPatchIn,
    security(("admin_token" = [])), params(("id" = i64, Path)),
    responses((status = 200, body = UserOut), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn update_user(
    State(state): State<AppState>,
    _: Operator,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UserPatchIn>,
) -> Result<Json<UserOut>, ApiError> {
    let id = parse_user_id(&id)?;
    let name = body.name.as_deref().map(validate_user_name).transpose()?;
    let tier = body.tier.as_deref().map(parse_tier).transpose()?;
    let user = state
        .store
        .update_user(id, name.as_deref(), tier)
        .await
        .map_err(user_not_found)?;
    Ok(Json(user.into()))
}

/// Issue another API key for a user.
#[utoipa::path(post, path = "/api/v1/admin/users/{id}/api-keys", tag = "operator",
    security(("admin_token" = [])), params(("id" = i64, Path)),
    responses((status = 201, body = ApiKeyOut), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn create_api_key(
    State(state): State<AppState>,
    _: Operator,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<ApiKeyOut>), ApiError> {
    let id = parse_user_id(&id)?;
    let api_key = generate_api_key();
    state
        .store
        .add_api_key(id, &hash_api_key(&api_key))
        .await
        .map_err(user_not_found)?;
    Ok((StatusCode::CREATED, Json(ApiKeyOut { api_key })))
}
