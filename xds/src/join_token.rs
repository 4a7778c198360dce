//! Join tokens on the proxy side: reading one from its file (`--identity-token`), and the xDS
//! stream metadata that carries it, so the control plane accepts the proxy's endpoint
//! registration over a plaintext xDS connection (see docs/security.md).

use std::path::{Path, PathBuf};

/// The gRPC metadata key of the join token on an xDS stream (`Bearer <token>`).
pub const METADATA_KEY: &str = "authorization";

/// Why a token file cannot be used. The messages never echo the file's content.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read the identity token {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the identity token {path} is empty; write the token from `outrider token create ... -q` into it")]
    Empty { path: PathBuf },
    #[error(
        "the identity token {path} holds more than a join token ({words} words on {lines} lines; the table `outrider token create` prints?); write only the token: `outrider token create --namespace NS --service-account SA -q > {path}`"
    )]
    NotAToken { path: PathBuf, words: usize, lines: usize },
}

/// The token in `path`: one word, surrounding whitespace and a trailing newline ignored.
pub fn read(path: &Path) -> Result<String, TokenFileError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| TokenFileError::Read { path: path.to_path_buf(), source })?;
    parse(path, &text)
}

fn parse(path: &Path, text: &str) -> Result<String, TokenFileError> {
    let token = text.trim();
    if token.is_empty() {
        return Err(TokenFileError::Empty { path: path.to_path_buf() });
    }
    let words = token.split_whitespace().count();
    if words > 1 {
        return Err(TokenFileError::NotAToken { path: path.to_path_buf(), words, lines: token.lines().count() });
    }
    Ok(token.to_owned())
}

/// The metadata value for `token`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The token of a metadata value `Bearer <token>`, if it is one.
pub fn from_bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const TOKEN: &str = "ort_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn a_token_with_a_newline_reads_as_the_token() {
        assert_eq!(parse(Path::new("t"), &format!("{TOKEN}\n")).unwrap(), TOKEN);
        assert_eq!(parse(Path::new("t"), &format!("  {TOKEN}  ")).unwrap(), TOKEN);
    }

    #[test]
    fn the_table_of_token_create_names_the_file_and_says_to_use_q() {
        let table = format!(
            "TOKEN      {TOKEN}\nIDENTITY   spiffe://outrider.local/ns/default/sa/web\nEXPIRES    1 (unix seconds; in 24h00m)\nSINGLE USE false\n"
        );
        let err = parse(Path::new("/etc/outrider/token"), &table).unwrap_err().to_string();
        assert!(err.contains("/etc/outrider/token"), "{err}");
        assert!(err.contains("-q"), "{err}");
        assert!(err.contains("4 lines"), "{err}");
        assert!(!err.contains(TOKEN), "never echo the secret: {err}");
    }

    #[test]
    fn an_empty_or_missing_file_is_an_error_naming_it() {
        let err = parse(Path::new("/t"), " \n").unwrap_err().to_string();
        assert!(err.contains("/t is empty"), "{err}");
        let err = read(Path::new("/nonexistent/token")).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/token"), "{err}");
    }

    #[test]
    fn bearer_round_trips() {
        assert_eq!(from_bearer(&bearer(TOKEN)), Some(TOKEN));
        assert_eq!(from_bearer("bearer x"), Some("x"));
        assert_eq!(from_bearer("Basic x"), None);
        assert_eq!(from_bearer("Bearer "), None);
    }
}
