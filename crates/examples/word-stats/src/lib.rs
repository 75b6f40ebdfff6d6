//! An example of a worker binary of your own: a task the procpool catalogue
//! does not have, registered in a `main` of a few lines, and run from the
//! command line like any other:
//!
//! ```text
//! cargo build --release -p word-stats
//! coordinator --worker-bin target/release/word-stats-worker --task word-stats \
//!     --param min_len=5 --input posts.csv --output stats.jsonl
//! ```
//!
//! The coordinator knows nothing of these types: it sends each input record
//! (a JSON line, or a CSV row with the header) as it is, this worker decodes
//! it into a [`Post`], and the [`PostStats`] it returns are written out as JSON.

use procpool::{Task, TaskError, TaskInfo};
use serde::{Deserialize, Serialize};

/// Word statistics of each post. Its fields are the task's parameters
/// (`--param min_len=5`, or `--params '{"min_len":5,"stop":["the"]}'`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WordStats {
    /// Words of at least this many characters count as long.
    #[serde(default = "default_min_len")]
    pub min_len: usize,
    /// Words left out of every count (compared without case).
    #[serde(default)]
    pub stop: Vec<String>,
}

fn default_min_len() -> usize {
    6
}

impl Default for WordStats {
    fn default() -> Self {
        WordStats {
            min_len: default_min_len(),
            stop: Vec::new(),
        }
    }
}

/// One input record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Post {
    /// The post's id.
    pub id: u64,
    /// Its text.
    pub text: String,
}

/// One output record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostStats {
    /// The post's id.
    pub id: u64,
    /// Words counted.
    pub words: usize,
    /// Of those, how many have at least `min_len` characters.
    pub long_words: usize,
    /// The longest word (the first of equals), lower-cased.
    pub longest: String,
}

impl Task for WordStats {
    const NAME: &'static str = "word-stats";
    type Input = Post;
    type Output = PostStats;

    fn run(&self, post: Post) -> Result<PostStats, TaskError> {
        let words: Vec<String> = post
            .text
            .split(|c: char| !c.is_alphanumeric() && c != '\'')
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .filter(|w| !self.stop.iter().any(|s| s.eq_ignore_ascii_case(w)))
            .collect();
        if words.is_empty() {
            return Err(format!("post {} has no words", post.id).into());
        }
        let mut longest = "";
        for w in &words {
            if w.chars().count() > longest.chars().count() {
                longest = w;
            }
        }
        Ok(PostStats {
            id: post.id,
            words: words.len(),
            long_words: words
                .iter()
                .filter(|w| w.chars().count() >= self.min_len)
                .count(),
            longest: longest.to_owned(),
        })
    }

    fn label(post: &Post) -> Option<String> {
        Some(format!("post {}", post.id))
    }

    fn info() -> TaskInfo {
        TaskInfo {
            name: Self::NAME.into(),
            description: "word statistics of a post (parameters: min_len, stop)".into(),
            input_fields: vec!["id".into(), "text".into()],
            output_fields: ["id", "words", "long_words", "longest"]
                .map(String::from)
                .to_vec(),
            ..TaskInfo::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_words_long_words_and_the_longest() {
        let task = WordStats {
            min_len: 5,
            stop: vec!["the".into()],
        };
        let out = task
            .run(Post {
                id: 7,
                text: "The quick, brown fox — jumps over the lazy dog's back!".into(),
            })
            .unwrap();
        assert_eq!(
            out,
            PostStats {
                id: 7,
                words: 8,
                long_words: 4,
                longest: "quick".into()
            }
        );
        assert!(task
            .run(Post {
                id: 8,
                text: " the ".into()
            })
            .is_err());
    }

    #[test]
    fn parameters_have_defaults() {
        let task: WordStats = serde_json::from_str("{}").unwrap();
        assert_eq!(task, WordStats::default());
    }
}
