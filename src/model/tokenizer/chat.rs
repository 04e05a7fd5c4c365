//! Chat templates: the model's Jinja template rendered as Hugging Face's `apply_chat_template`
//! renders it: `trim_blocks` and `lstrip_blocks` on, Python's string methods available, the
//! context holding `messages`, `tools` and `documents` (none when not given),
//! `add_generation_prompt` and the special tokens, and the functions real templates call,
//! `raise_exception` and `strftime_now`.
//!
//! A template is code from the model's files, so its work is bounded: one that loops for ever
//! fails with a clear error instead of hanging the caller.

use minijinja::value::Serde;
use minijinja::{
    Environment, Error as JinjaError, ErrorKind, Value, context, syntax::SyntaxConfig,
};
use serde::Serialize;

use super::{TextTokenizer, tok_err};
use crate::error::{Error, Result};

/// The most work one render may do, in minijinja's fuel (about one unit per instruction and per
/// 64 bytes of text): a long conversation with a real template needs a few hundred thousand;
/// this stops a runaway template within a fraction of a second.
pub const CHAT_TEMPLATE_FUEL: u64 = 20_000_000;

/// One message of a conversation. Templates read `role` and `content`; anything else a
/// template wants (`tool_calls`, `name`, ...) goes in `extra`, flattened beside them.
#[derive(Clone, Debug, Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> ChatMessage {
        ChatMessage {
            role: role.to_string(),
            content: content.to_string(),
            extra: serde_json::Map::new(),
        }
    }
}

impl TextTokenizer {
    /// Renders the chat template for one user turn, ready for the assistant's reply.
    pub fn apply_chat_template(&self, user_message: &str) -> Result<String> {
        self.render_chat_messages(&[ChatMessage::new("user", user_message)], None, true)
    }

    /// Renders the chat template for a conversation of (role, content) messages, ready for
    /// the assistant's reply. A first message with role "system" is the system prompt.
    pub fn render_chat(&self, messages: &[(String, String)]) -> Result<String> {
        let messages: Vec<ChatMessage> = messages
            .iter()
            .map(|(role, content)| ChatMessage::new(role, content))
            .collect();
        self.render_chat_messages(&messages, None, true)
    }

    /// Renders the chat template for `messages`, with the tool descriptions (JSON schemas as
    /// Hugging Face passes them) when given.
    pub fn render_chat_messages(
        &self,
        messages: &[ChatMessage],
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self
            .chat_template
            .as_deref()
            .ok_or_else(|| Error::Tokenizer("model has no chat template".into()))?;
        let env = environment().map_err(template_error)?;
        let template = env.template_from_str(template).map_err(template_error)?;
        template
            .render(context! {
                messages => Value::from(Serde(messages)),
                tools => tools.map(|t| Value::from(Serde(t))),
                documents => Value::from(()),
                add_generation_prompt,
                bos_token => self.special_text(self.bos),
                eos_token => self.special_text(self.eos.first().copied()),
            })
            .map_err(template_error)
    }
}

fn template_error(e: JinjaError) -> Error {
    match e.kind() {
        ErrorKind::OutOfFuel => Error::Tokenizer(format!(
            "chat template: gave up after {CHAT_TEMPLATE_FUEL} steps, far more than any chat \
             template needs (does it loop without end?)"
        )),
        ErrorKind::InvalidOperation if e.detail().is_some() => {
            // raise_exception's message, as the template wrote it.
            Error::Tokenizer(format!(
                "chat template raised: {}",
                e.detail().unwrap_or_default()
            ))
        }
        _ => tok_err("chat template", e),
    }
}

fn environment() -> std::result::Result<Environment<'static>, JinjaError> {
    let mut env = Environment::new();
    env.set_syntax(
        SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()?,
    );
    env.set_fuel(Some(CHAT_TEMPLATE_FUEL));
    // Templates call Python's str and dict methods: .strip(), .startswith(), .items(), ...
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<String, JinjaError> {
            Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
        },
    );
    env.add_function("strftime_now", |format: String| {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        strftime(&format, since_epoch)
    });
    Ok(env)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// `seconds` since 1970 (UTC) written with the strftime codes templates use (%d %m %Y %y %B
/// %b %A %a %H %I %M %S %p %j %e %%); any other code is kept as written.
pub fn strftime(format: &str, seconds: i64) -> String {
    let days = seconds.div_euclid(86_400);
    let secs = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (secs / 3600, secs / 60 % 60, secs % 60);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let day_of_year = days - days_from_civil(year, 1, 1) + 1;
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(code) = chars.next() else {
            out.push('%');
            break;
        };
        let month_name = MONTHS[month as usize - 1];
        match code {
            'Y' => out += &year.to_string(),
            'y' => out += &format!("{:02}", year.rem_euclid(100)),
            'm' => out += &format!("{month:02}"),
            'd' => out += &format!("{day:02}"),
            'e' => out += &format!("{day:>2}"),
            'B' => out += month_name,
            'b' | 'h' => out += &month_name[..3],
            'A' => out += WEEKDAYS[weekday],
            'a' => out += &WEEKDAYS[weekday][..3],
            'H' => out += &format!("{hour:02}"),
            'I' => out += &format!("{:02}", (hour + 11) % 12 + 1),
            'p' => out += if hour < 12 { "AM" } else { "PM" },
            'M' => out += &format!("{minute:02}"),
            'S' => out += &format!("{second:02}"),
            'j' => out += &format!("{day_of_year:03}"),
            '%' => out.push('%'),
            other => {
                out.push('%');
                out.push(other);
            }
        }
    }
    out
}

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01, in the proleptic Gregorian
/// calendar (Howard Hinnant's civil-from-days method).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::strftime;

    #[test]
    fn strftime_matches_python_on_known_instants() {
        // Expected strings from Python: time.strftime(fmt, time.gmtime(t)).
        let fmt = "%d %b %Y|%A %B %j|%I:%M:%S %p|%y-%m-%e";
        assert_eq!(
            strftime(fmt, 0),
            "01 Jan 1970|Thursday January 001|12:00:00 AM|70-01- 1"
        );
        assert_eq!(
            strftime(fmt, 1_709_251_199),
            "29 Feb 2024|Thursday February 060|11:59:59 PM|24-02-29"
        );
        assert_eq!(
            strftime(fmt, 4_102_444_800),
            "01 Jan 2100|Friday January 001|12:00:00 AM|00-01- 1"
        );
    }
}
