//! Our own extractors: JSON bodies that fail in our error shape with the field named,
//! and the caller's identity from a bearer token.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::ratelimit::retry_after_secs;
use super::AppState;
use crate::domain::secret::hash_api_key;
use crate::input::{from_json_value, parse_json_value};
use crate::store::User;

/// A JSON body. Syntax errors are 400 `malformed_json`; shape errors (missing, unknown or
/// mistyped fields) are 422 naming the field.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::MalformedJson(rejection.body_text())
            }
        })?;
        let value = parse_json_value(&bytes)?;
        Ok(ApiJson(from_json_value(value)?))
    }
}

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The user owning the request's API key.
pub struct AuthUser(pub User);

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let key = bearer(parts).ok_or(ApiError::Unauthorized)?;
        let key_hash = hash_api_key(key);
        // Before the lookup: a flood with one key, known or not, never reaches the database.
        state
            .limiter
            .check(&key_hash, std::time::Instant::now())
            .map_err(|wait| ApiError::RateLimited {
                retry_after_secs: retry_after_secs(wait),
            })?;
        let user = state
            .store
            .user_by_api_key(&key_hash)
            .await?
            .ok_or(ApiError::Unauthorized)?;
        Ok(AuthUser(user))
    }
}

/// Proof that the request carries the operator token.
pub struct Operator;

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let expected = state
            .config
            .admin_token
            .as_deref()
            .ok_or(ApiError::AdminDisabled)?;
        let given = bearer(parts).ok_or(ApiError::Unauthorized)?;
        // Hashing first makes the comparison constant-time in the length too.
        let a = Sha256::digest(expected.as_bytes());
        let b = Sha256::digest(given.as_bytes());
        if bool::from(a.ct_eq(&b)) {
            Ok(Operator)
        } else {
            Err(ApiError::Unauthorized)
        }
    }
}
