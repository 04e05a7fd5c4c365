//! Documents of the aclsum data set (ACL papers with summaries of their challenge, approach and
//! outcome), as scripts/fetch.sh puts them in data/aclsum/: the split files (abstract,
//! introduction and conclusion sentences) and paper_jsons/ (every paper's full text).

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

#[derive(Clone, Debug)]
pub struct Document {
    pub id: String,
    /// Abstract, introduction and conclusion, sentence by sentence.
    pub sentences: Vec<String>,
    /// The three aspect summaries joined: challenge, approach, outcome.
    pub summary: String,
}

#[derive(Deserialize)]
struct Paper {
    pdf_parse: Body,
}

#[derive(Deserialize)]
struct Body {
    body_text: Vec<Paragraph>,
}

#[derive(Deserialize)]
struct Paragraph {
    text: String,
}

#[derive(Deserialize)]
struct Row {
    id: String,
    summary: Aspects,
    sentences: Sections,
}

#[derive(Deserialize)]
struct Aspects {
    challenge: String,
    approach: String,
    outcome: String,
}

#[derive(Deserialize)]
struct Sections {
    #[serde(rename = "abstract")]
    abstract_: Vec<String>,
    introduction: Vec<String>,
    conclusion: Vec<String>,
}

pub fn load(path: &Path) -> Result<Vec<Document>> {
    let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::NotFound(path.to_path_buf()),
        _ => Error::io(path, e),
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            let row: Row = serde_json::from_str(line).map_err(|e| {
                Error::malformed(path, "aclsum jsonl", format!("line {}: {e}", i + 1))
            })?;
            let s = row.sentences;
            let a = row.summary;
            Ok(Document {
                id: row.id,
                sentences: s
                    .abstract_
                    .into_iter()
                    .chain(s.introduction)
                    .chain(s.conclusion)
                    .collect(),
                summary: format!("{} {} {}", a.challenge, a.approach, a.outcome),
            })
        })
        .collect()
}

/// Every paper of the three splits with its full text, paragraph by paragraph, in `sentences`.
pub fn load_papers(dir: &Path) -> Result<Vec<Document>> {
    let mut docs = Vec::new();
    for split in ["test", "val", "train"] {
        for mut doc in load(&dir.join(format!("{split}.jsonl")))? {
            let path = dir.join("paper_jsons").join(format!("{}.json", doc.id));
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            let paper: Paper = serde_json::from_str(&text)
                .map_err(|e| Error::malformed(&path, "aclsum paper", e.to_string()))?;
            doc.sentences = paper
                .pdf_parse
                .body_text
                .into_iter()
                .map(|p| p.text)
                .collect();
            docs.push(doc);
        }
    }
    Ok(docs)
}

impl Document {
    /// The longest prefix of whole sentences whose text fits in `max_tokens` by `count`.
    pub fn text_within(&self, max_tokens: usize, count: &dyn Fn(&str) -> usize) -> String {
        let mut text = String::new();
        for s in &self.sentences {
            let next = if text.is_empty() {
                s.clone()
            } else {
                format!("{text} {s}")
            };
            if count(&next) > max_tokens {
                break;
            }
            text = next;
        }
        text
    }
}
