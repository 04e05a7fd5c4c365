//! A tokenizer folder's files and chat templates are input from outside: bad ones fail fast with
//! a clear error (issue 23), and templates get what Hugging Face gives them (issue 22).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use keyformer::model::tokenizer::{ChatMessage, TextTokenizer};

/// A one-word tokenizer.json that `tokenizers` reads.
const TOKENIZER_JSON: &str = r#"{"version": "1.0", "truncation": null, "padding": null,
  "added_tokens": [], "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
  "post_processor": null, "decoder": null,
  "model": {"type": "WordLevel", "vocab": {"<s>": 0, "</s>": 1, "hello": 2, "[UNK]": 3},
            "unk_token": "[UNK]"}}"#;

/// A fresh folder under the system's temporary folder, removed on drop.
struct Folder(PathBuf);

impl Folder {
    fn new(name: &str) -> Folder {
        let dir = std::env::temp_dir().join(format!("keyformer-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("tokenizer.json"), TOKENIZER_JSON).unwrap();
        Folder(dir)
    }

    fn with_template(name: &str, template: &str) -> Folder {
        let folder = Folder::new(name);
        let config = serde_json::json!({
            "bos_token": "<s>", "eos_token": "</s>", "chat_template": template,
        });
        std::fs::write(folder.0.join("tokenizer_config.json"), config.to_string()).unwrap();
        folder
    }
}

impl Drop for Folder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn load_error(dir: &Path) -> String {
    let t0 = Instant::now();
    let err = match TextTokenizer::load(dir) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    };
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t0.elapsed()
    );
    err
}

#[test]
fn tokenizer_files_linked_to_dev_zero_are_refused_at_once() {
    if !Path::new("/dev/zero").exists() {
        println!("SKIP: no /dev/zero here");
        return;
    }
    for name in [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        let folder = Folder::new(&format!("zero-{}", name.replace('.', "-")));
        let path = folder.0.join(name);
        let _ = std::fs::remove_file(&path);
        std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
        let err = load_error(&folder.0);
        assert!(
            err.contains(name) && err.contains("not a regular file"),
            "{name}: {err}"
        );
    }
}

#[test]
fn tokenizer_config_larger_than_the_limit_is_refused_unread() {
    let folder = Folder::new("huge-config");
    let file = std::fs::File::create(folder.0.join("tokenizer_config.json")).unwrap();
    // A sparse file: no disk used, and never read.
    file.set_len(1 << 40).unwrap();
    let err = load_error(&folder.0);
    assert!(err.contains("over the 256 MiB limit"), "{err}");
}

#[test]
fn chat_template_that_never_ends_fails_within_seconds() {
    let template = "{% for a in range(10000) %}{% for b in range(10000) %}\
                    {% for c in range(10000) %}x{% endfor %}{% endfor %}{% endfor %}";
    let folder = Folder::with_template("endless-template", template);
    let tok = TextTokenizer::load(&folder.0).unwrap();
    let t0 = Instant::now();
    let err = tok.apply_chat_template("hello").unwrap_err().to_string();
    let took = t0.elapsed();
    println!("endless template stopped after {took:?}: {err}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(err.contains("loop without end"), "{err}");
}

#[test]
fn chat_template_gets_tools_system_message_and_template_functions() {
    let template = "{{ bos_token }}{% if tools is not none %}[{{ tools | length }} tools: \
        {{ tools[0].function.name }}]{% endif %}{% for m in messages %}\
        {% if m.role == 'system' %}SYS {{ m.content.strip() }}|\
        {% elif m.content.startswith('!') %}{{ raise_exception('no bangs') }}\
        {% else %}{{ m.role }}: {{ m.content }}{{ eos_token }}{% endif %}{% endfor %}\
        {% if add_generation_prompt %}assistant ({{ strftime_now('%Y') | length }}):{% endif %}";
    let folder = Folder::with_template("tools-template", template);
    let tok = TextTokenizer::load(&folder.0).unwrap();
    let tools = [serde_json::json!({
        "type": "function",
        "function": {"name": "get_weather", "parameters": {"type": "object"}},
    })];
    let messages = [
        ChatMessage::new("system", "  Be brief. "),
        ChatMessage::new("user", "hi"),
    ];
    let text = tok
        .render_chat_messages(&messages, Some(&tools), true)
        .unwrap();
    assert_eq!(
        text,
        "<s>[1 tools: get_weather]SYS Be brief.|user: hi</s>assistant (4):"
    );
    // Without tools the template sees `none`, as with Hugging Face.
    let text = tok
        .render_chat_messages(&messages[1..], None, false)
        .unwrap();
    assert_eq!(text, "<s>user: hi</s>");
    let err = tok.apply_chat_template("!boom").unwrap_err().to_string();
    assert!(err.contains("no bangs"), "{err}");
}
