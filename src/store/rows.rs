//! Turning rows into records: the same decoders for every backend, generated per row type.

/// Columns of a webhook row, as every `webhook_from_row` expects them.
pub(crate) const WEBHOOK_COLUMNS: &str =
    "id, user_id, name, url, min_amount_usd, chains, protocols, categories, \
     is_active, secret, disabled_reason, created_at, updated_at";

/// Columns of a delivery row, as every `delivery_from_row` expects them.
pub(crate) const DELIVERY_COLUMNS: &str =
    "id, webhook_id, exploit_id, event, status, attempts, next_attempt_at, \
     created_at, sent_at, delivered_at, status_code, latency_ms, error";

/// An exploit joined to a delivery, as `exploit_from_row` expects it.
pub(crate) const EXPLOIT_JOIN_COLUMNS: &str =
    "e.id AS e_id, e.tx_hash, e.chain, e.protocol, e.amount_usd, e.timestamp, \
     e.source, e.source_url, e.category, e.description, e.detected_at";

/// Defines `exploit_from_row`, `body_from_row`, `user_from_row`, `webhook_from_row`,
/// `filters_from_row` and `delivery_from_row` for one backend's row type.
macro_rules! row_decoders {
    ($row:ty) => {
        fn exploit_from_row(row: &$row) -> StoreResult<Exploit> {
            Ok(Exploit {
                id: row.try_get("e_id")?,
                tx_hash: row.try_get("tx_hash")?,
                chain: row.try_get("chain")?,
                protocol: row.try_get("protocol")?,
                amount_usd: row.try_get("amount_usd")?,
                timestamp_ms: row.try_get("timestamp")?,
                source: row.try_get("source")?,
                source_url: row.try_get("source_url")?,
                category: row.try_get("category")?,
                description: row.try_get("description")?,
                detected_at_ms: row.try_get("detected_at")?,
            })
        }

        /// The body of a delivery: its own payload (test events) or its exploit's event.
        fn body_from_row(row: &$row, event: &str) -> StoreResult<String> {
            if let Some(p) = row.try_get::<Option<String>, _>("payload")? {
                return Ok(p);
            }
            if row.try_get::<Option<i64>, _>("e_id")?.is_none() {
                return Err(StoreError::Corrupt(
                    "delivery without payload or exploit".into(),
                ));
            }
            Ok(encode_event(event, &exploit_from_row(row)?))
        }

        fn user_from_row(row: &$row) -> StoreResult<User> {
            let tier: String = row.try_get("tier")?;
            Ok(User {
                id: row.try_get("id")?,
                name: row.try_get("name")?,
                tier: tier.parse().map_err(StoreError::Corrupt)?,
                created_at_ms: row.try_get("created_at")?,
            })
        }

        fn webhook_from_row(row: &$row) -> StoreResult<Webhook> {
            Ok(Webhook {
                id: row.try_get("id")?,
                user_id: row.try_get("user_id")?,
                name: row.try_get("name")?,
                url: row.try_get("url")?,
                filters: filters_from_row(row)?,
                is_active: row.try_get("is_active")?,
                secret: row.try_get("secret")?,
                disabled_reason: row.try_get("disabled_reason")?,
                created_at_ms: row.try_get("created_at")?,
                updated_at_ms: row.try_get("updated_at")?,
            })
        }

        fn filters_from_row(row: &$row) -> StoreResult<Filters> {
            Ok(Filters {
                min_amount_usd: row.try_get("min_amount_usd")?,
                chains: decode_list(row.try_get("chains")?)?,
                protocols: decode_list(row.try_get("protocols")?)?,
                categories: decode_list(row.try_get("categories")?)?,
            })
        }

        fn delivery_from_row(row: &$row) -> StoreResult<DeliveryRecord> {
            let status: String = row.try_get("status")?;
            Ok(DeliveryRecord {
                id: row.try_get("id")?,
                webhook_id: row.try_get("webhook_id")?,
                exploit_id: row.try_get("exploit_id")?,
                event: row.try_get("event")?,
                status: DeliveryStatus::parse(&status)
                    .ok_or_else(|| StoreError::Corrupt(format!("delivery status {status:?}")))?,
                attempts: row.try_get("attempts")?,
                next_attempt_at_ms: row.try_get("next_attempt_at")?,
                created_at_ms: row.try_get("created_at")?,
                sent_at_ms: row.try_get("sent_at")?,
                delivered_at_ms: row.try_get("delivered_at")?,
                status_code: row.try_get("status_code")?,
                latency_ms: row.try_get("latency_ms")?,
                error: row.try_get("error")?,
            })
        }
    };
}
pub(crate) use row_decoders;
