//! Logging set-up: `tracing` to stderr, filtered by `RUST_LOG` (default `info`).

use std::fmt;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{DefaultFields, Writer};
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .fmt_fields(Fields)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Fields written as the default formatter writes them. The formatter writes a span's
/// fields when the span is made, logged or not: for a delivery attempt's span (three
/// integers, once a delivery) that was about 3,800 instructions through `fmt` and
/// colour styling (callgrind). Fields that are all integers or booleans, written
/// without colours, take a direct path here with the same output; anything else goes
/// to the default formatter.
pub struct Fields;

impl<'w> FormatFields<'w> for Fields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        if !writer.has_ansi_escapes() {
            let mut probe = Plain { plain: true };
            fields.record(&mut probe);
            if probe.plain {
                let mut out = Direct {
                    writer: &mut writer,
                    first: true,
                    result: Ok(()),
                };
                fields.record(&mut out);
                return out.result;
            }
        }
        DefaultFields::new().format_fields(writer, fields)
    }
}

/// Whether every field is an integer or a boolean with a name the default formatter
/// writes as it is.
struct Plain {
    plain: bool,
}

impl Plain {
    fn name(&mut self, field: &Field) {
        let name = field.name();
        // The default formatter skips `log.` fields, strips `r#` and writes `message` bare.
        if name.starts_with("log.") || name.starts_with("r#") || name == "message" {
            self.plain = false;
        }
    }
}

impl Visit for Plain {
    fn record_i64(&mut self, field: &Field, _: i64) {
        self.name(field);
    }
    fn record_u64(&mut self, field: &Field, _: u64) {
        self.name(field);
    }
    fn record_bool(&mut self, field: &Field, _: bool) {
        self.name(field);
    }
    fn record_debug(&mut self, _: &Field, _: &dyn fmt::Debug) {
        self.plain = false;
    }
}

/// Writes `name=value` pairs, space-separated, for the fields `Plain` accepted.
struct Direct<'a, 'w> {
    writer: &'a mut Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl Direct<'_, '_> {
    fn pair(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        if !self.first {
            self.result = self.writer.write_char(' ');
        }
        self.first = false;
        self.result = self
            .result
            .and_then(|()| self.writer.write_str(field.name()))
            .and_then(|()| self.writer.write_char('='))
            .and_then(|()| self.writer.write_str(value));
    }
}

impl Visit for Direct<'_, '_> {
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.pair(field, itoa::Buffer::new().format(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.pair(field, itoa::Buffer::new().format(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.pair(field, if value { "true" } else { "false" });
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // Not reached: `Plain` sent every other kind of field to the default formatter.
        self.pair(field, &format!("{value:?}"));
    }
}

/// Log output written to memory, for tests of what is logged.
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

#[cfg(test)]
impl Captured {
    /// Everything written so far.
    pub(crate) fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

#[cfg(test)]
impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    fn emit() {
        let attempt = tracing::info_span!(
            "delivery_attempt",
            webhook_id = 7i64,
            delivery_id = 12345678901i64,
            attempt = 3u64,
        );
        let _a = attempt.enter();
        let mixed = tracing::info_span!("mixed", ok = true, count = -4i64, url = "http://x/");
        let _m = mixed.enter();
        let plain_name = tracing::info_span!("raw", r#type = 5i64, message = 6i64);
        let _r = plain_name.enter();
        let error = io::Error::other("refused");
        tracing::info!(status = 503u64, error = %error, kind = "timeout", "attempt failed");
        tracing::warn!(flag = false, n = 0i64);
    }

    fn capture<N>(fields: N) -> String
    where
        N: for<'w> FormatFields<'w> + Send + Sync + 'static,
    {
        let out = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .without_time()
            .fmt_fields(fields)
            .with_writer(out.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        out.text()
    }

    #[test]
    fn fields_are_written_as_the_default_formatter_writes_them() {
        let ours = capture(Fields);
        let default = capture(DefaultFields::new());
        assert!(
            ours.contains("delivery_attempt{webhook_id=7 delivery_id=12345678901 attempt=3}"),
            "{ours}"
        );
        assert!(
            ours.contains("mixed{ok=true count=-4 url=\"http://x/\"}"),
            "{ours}"
        );
        assert_eq!(ours, default);
    }
}
