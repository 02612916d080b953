//! SQL sanitising: every literal becomes `?`, comments go, and the operation and (for simple
//! statements) the table are read from what is left. Two dialects ([`Dialect`]):
//!
//! **PostgreSQL.** Literals are string constants (`'…'` with `''` inside, `E'…'` with backslash escapes, `B'…'`,
//! `X'…'`, `N'…'`, `U&'…'`), dollar-quoted strings (`$$…$$`, `$tag$…$tag$`) and numbers
//! (integers, decimals, exponents, `0x`/`0o`/`0b` forms, `_` separators). Quoted identifiers
//! (`"…"`) and `$n` parameters are kept. Text cut short (a statement that went on past what was
//! captured) is sanitised as far as it goes, and a literal it cuts is still a `?`: a value of
//! the user's data never comes out.
//!
//! **MySQL / MariaDB.** Literals are single- *and* double-quoted strings (backslash escapes
//! and doubled quotes inside; `"…"` is a string unless the server runs in `ANSI_QUOTES` mode,
//! and taking it for one never leaks), `X'…'`, `B'…'`, `N'…'` and numbers; `` `…` `` quoted
//! identifiers and `?` placeholders are kept; `#` starts a comment, as `--` and `/* */` do
//! (`/*! … */` version comments go with them).

/// Longest sanitised text kept (longer text is cut at a character boundary and ends in `…`).
pub const MAX_QUERY: usize = 2048;
/// Longest operation or table name kept.
const MAX_WORD: usize = 64;

/// What a statement says about itself once sanitised.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sql {
    /// The text with every literal replaced by `?`.
    pub text: String,
    /// The first keyword, upper-cased (`SELECT`, `INSERT`…).
    pub operation: Option<String>,
    /// The table of a simple single-table statement.
    pub collection: Option<String>,
}

/// Which server's lexical rules apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Mysql,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Word(String),
    Quoted(String),
    Literal,
    Param(String),
    Punct(char),
}

fn tokens(sql: &str, dialect: Dialect) -> Vec<Token> {
    let my = dialect == Dialect::Mysql;
    let b: Vec<char> = sql.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let n = b.len();
    // Skips a string quoted by `b[i]`; `backslash`: backslash escapes (E'…', MySQL's strings).
    let skip_string = |mut i: usize, backslash: bool| -> usize {
        let q = b[i];
        i += 1;
        while i < n {
            match b[i] {
                '\\' if backslash => i += 2,
                c if c == q && i + 1 < n && b[i + 1] == q => i += 2,
                c if c == q => return i + 1,
                _ => i += 1,
            }
        }
        n
    };
    while i < n {
        let c = b[i];
        if c.is_whitespace() {
            i += 1;
        } else if (c == '-' && i + 1 < n && b[i + 1] == '-') || (my && c == '#') {
            while i < n && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && i + 1 < n && b[i + 1] == '*' {
            // Nested block comments, as PostgreSQL has them.
            let mut depth = 0usize;
            while i < n {
                if b[i] == '/' && i + 1 < n && b[i + 1] == '*' {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && i + 1 < n && b[i + 1] == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == '\'' || (my && c == '"') {
            i = skip_string(i, my);
            out.push(Token::Literal);
        } else if my && c == '`' {
            let mut j = i + 1;
            while j < n && b[j] != '`' {
                j += 1;
            }
            if j >= n {
                out.push(Token::Literal);
                i = n;
            } else {
                out.push(Token::Quoted(b[i..=j].iter().collect()));
                i = j + 1;
            }
        } else if my && c == '?' {
            out.push(Token::Param("?".to_owned()));
            i += 1;
        } else if !my && matches!(c, 'e' | 'E') && i + 1 < n && b[i + 1] == '\'' {
            i = skip_string(i + 1, true);
            out.push(Token::Literal);
        } else if matches!(c, 'b' | 'B' | 'x' | 'X' | 'n' | 'N') && i + 1 < n && b[i + 1] == '\'' {
            i = skip_string(i + 1, false);
            out.push(Token::Literal);
        } else if !my && matches!(c, 'u' | 'U') && i + 2 < n && b[i + 1] == '&' && b[i + 2] == '\'' {
            i = skip_string(i + 2, false);
            out.push(Token::Literal);
        } else if c == '"' || (!my && matches!(c, 'u' | 'U') && i + 2 < n && b[i + 1] == '&' && b[i + 2] == '"') {
            let start = if c == '"' { i } else { i + 2 };
            let mut j = start + 1;
            while j < n {
                if b[j] == '"' && j + 1 < n && b[j + 1] == '"' {
                    j += 2;
                } else if b[j] == '"' {
                    break;
                } else {
                    j += 1;
                }
            }
            if j >= n {
                // Unterminated (cut short, or malformed): it may hide anything.
                out.push(Token::Literal);
                i = n;
            } else {
                out.push(Token::Quoted(b[start..=j].iter().collect()));
                i = j + 1;
            }
        } else if !my && c == '$' {
            // `$n` parameter, or a dollar quote `$tag$ … $tag$`.
            let mut j = i + 1;
            if j < n && b[j].is_ascii_digit() {
                while j < n && b[j].is_ascii_digit() {
                    j += 1;
                }
                out.push(Token::Param(b[i..j].iter().collect()));
                i = j;
                continue;
            }
            while j < n && (b[j].is_alphanumeric() || b[j] == '_') {
                j += 1;
            }
            if j < n && b[j] == '$' {
                let tag: Vec<char> = b[i..=j].to_vec();
                let mut k = j + 1;
                let end = loop {
                    if k + tag.len() > n {
                        break n;
                    }
                    if b[k..k + tag.len()] == tag[..] {
                        break k + tag.len();
                    }
                    k += 1;
                };
                out.push(Token::Literal);
                i = end;
            } else {
                out.push(Token::Punct('$'));
                i += 1;
            }
        } else if c.is_ascii_digit() || (c == '.' && i + 1 < n && b[i + 1].is_ascii_digit()) {
            let mut j = i;
            if c == '0' && i + 1 < n && matches!(b[i + 1], 'x' | 'X' | 'o' | 'O' | 'b' | 'B') {
                j += 2;
                while j < n && (b[j].is_ascii_hexdigit() || b[j] == '_') {
                    j += 1;
                }
            } else {
                while j < n && (b[j].is_ascii_digit() || b[j] == '_' || b[j] == '.') {
                    j += 1;
                }
                if j < n && matches!(b[j], 'e' | 'E') {
                    let mut k = j + 1;
                    if k < n && matches!(b[k], '+' | '-') {
                        k += 1;
                    }
                    if k < n && b[k].is_ascii_digit() {
                        j = k;
                        while j < n && b[j].is_ascii_digit() {
                            j += 1;
                        }
                    }
                }
            }
            out.push(Token::Literal);
            i = j.max(i + 1);
        } else if c.is_alphabetic() || c == '_' {
            let mut j = i;
            while j < n && (b[j].is_alphanumeric() || b[j] == '_' || b[j] == '$') {
                j += 1;
            }
            out.push(Token::Word(b[i..j].iter().collect()));
            i = j;
        } else {
            out.push(Token::Punct(c));
            i += 1;
        }
    }
    out
}

fn render(tokens: &[Token]) -> String {
    let mut s = String::new();
    let mut prev: Option<&Token> = None;
    for t in tokens {
        let piece = match t {
            Token::Word(w) | Token::Quoted(w) | Token::Param(w) => w.as_str(),
            Token::Literal => "?",
            Token::Punct(_) => "",
        };
        let glue = !matches!(
            (prev, t),
            (None, _)
                | (_, Token::Punct(',' | ')' | ';' | '.' | ':' | '[' | ']'))
                | (Some(Token::Punct('(' | '.' | ':' | '[')), _)
                | (Some(Token::Punct('-')), Token::Literal)
        );
        if glue {
            s.push(' ');
        }
        match t {
            Token::Punct(c) => s.push(*c),
            _ => s.push_str(piece),
        }
        prev = Some(t);
    }
    s
}

fn name_of(t: &Token) -> Option<String> {
    match t {
        Token::Word(w) | Token::Quoted(w) => Some(w.clone()),
        _ => None,
    }
}

/// `schema.table` (or `table`) starting at `tokens[i]`.
fn table_at(tokens: &[Token], i: usize) -> Option<String> {
    let mut name = name_of(tokens.get(i)?)?;
    if matches!(tokens.get(i + 1), Some(Token::Punct('.'))) {
        name.push('.');
        name.push_str(&name_of(tokens.get(i + 2)?)?);
    }
    (name.chars().count() <= MAX_WORD).then_some(name)
}

fn is_kw(t: Option<&Token>, kw: &str) -> bool {
    matches!(t, Some(Token::Word(w)) if w.eq_ignore_ascii_case(kw))
}

/// The table of a statement over exactly one table: `SELECT … FROM t` without joins,
/// subqueries or a second table, `INSERT INTO t`, `UPDATE t`, `DELETE FROM t`.
fn collection(op: &str, tokens: &[Token]) -> Option<String> {
    let count = |kw: &str| tokens.iter().filter(|t| is_kw(Some(t), kw)).count();
    let find = |kw: &str| tokens.iter().position(|t| is_kw(Some(t), kw));
    match op {
        "SELECT" | "DELETE" => {
            if count("FROM") != 1 || count("JOIN") > 0 || count("SELECT") > 1 {
                return None;
            }
            let i = find("FROM")? + 1;
            if is_kw(tokens.get(i), "ONLY") {
                return None;
            }
            let name = table_at(tokens, i)?;
            let after = if matches!(tokens.get(i + 1), Some(Token::Punct('.'))) { i + 3 } else { i + 1 };
            // `FROM a, b` names two tables.
            (!matches!(tokens.get(after), Some(Token::Punct(',')))).then_some(name)
        }
        "INSERT" => {
            if count("SELECT") > 0 {
                return None;
            }
            let i = find("INTO")? + 1;
            table_at(tokens, i)
        }
        "UPDATE" => {
            if count("FROM") > 0 || count("SELECT") > 0 {
                return None;
            }
            let i = tokens.iter().position(|t| is_kw(Some(t), "UPDATE"))? + 1;
            if is_kw(tokens.get(i), "ONLY") {
                return None;
            }
            table_at(tokens, i)
        }
        _ => None,
    }
}

/// Sanitises PostgreSQL's `sql` (see the module docs).
pub fn sanitize(sql: &str) -> Sql {
    sanitize_as(sql, Dialect::Postgres)
}

/// Sanitises `sql` after `dialect`'s lexical rules (see the module docs).
pub fn sanitize_as(sql: &str, dialect: Dialect) -> Sql {
    let toks = tokens(sql, dialect);
    let mut text = render(&toks);
    if text.len() > MAX_QUERY {
        let mut cut = MAX_QUERY;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    let operation = toks.iter().find_map(|t| match t {
        Token::Word(w) if w.len() <= MAX_WORD => Some(w.to_ascii_uppercase()),
        Token::Punct('(') => None,
        _ => Some(String::new()),
    });
    let operation = operation.filter(|o| !o.is_empty());
    let collection = operation.as_deref().and_then(|op| collection(op, &toks));
    Sql { text, operation, collection }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(sql: &str) -> String {
        sanitize(sql).text
    }

    #[test]
    fn every_kind_of_literal_becomes_a_placeholder() {
        assert_eq!(clean("SELECT * FROM users WHERE id = 42"), "SELECT * FROM users WHERE id = ?");
        assert_eq!(
            clean("select name from t where n='O''Brien' and x=-1.5e3"),
            "select name from t where n = ? and x = -?"
        );
        assert_eq!(clean("SELECT E'a\\'b', B'1010', X'ff', N'nat', U&'d\\0061t'"), "SELECT ?, ?, ?, ?, ?");
        assert_eq!(clean("SELECT $$secret$$, $fn$ body 'x' $fn$, $1"), "SELECT ?, ?, $1");
        assert_eq!(clean("SELECT 0x1F, 0o17, 0b101, 1_000, .5, 3."), "SELECT ?, ?, ?, ?, ?, ?");
        assert_eq!(
            clean("INSERT INTO t2(a1, \"Col 2\") VALUES (1, 'x')"),
            "INSERT INTO t2 (a1, \"Col 2\") VALUES (?, ?)"
        );
        assert_eq!(clean("SELECT 1 -- the secret\n, 2 /* a /* nested */ secret */"), "SELECT ?, ?");
        assert_eq!(clean("SELECT a::text, arr[1] FROM s.t"), "SELECT a::text, arr[?] FROM s.t");
    }

    #[test]
    fn cut_text_never_leaks_the_cut_literal() {
        assert_eq!(clean("INSERT INTO t VALUES ('a secret that goes on"), "INSERT INTO t VALUES (?");
        assert_eq!(clean("SELECT $q$ unterminated secret"), "SELECT ?");
        assert_eq!(clean("SELECT E'unterminated \\' secret"), "SELECT ?");
        assert_eq!(clean("SELECT \"x' , 'secret'"), "SELECT ?");
        let long = format!("SELECT {}", "a, ".repeat(2000));
        assert!(clean(&long).len() <= MAX_QUERY + '…'.len_utf8());
    }

    #[test]
    fn mysql_strings_comments_and_placeholders() {
        let my = |s: &str| sanitize_as(s, Dialect::Mysql).text;
        assert_eq!(
            my("SELECT * FROM t WHERE a = \"x\" AND b = 'it\\'s' AND c = ?"),
            "SELECT * FROM t WHERE a = ? AND b = ? AND c = ?"
        );
        assert_eq!(
            my("SELECT `my col`, x'ff', b'01' FROM `db`.`t` # the secret\n"),
            "SELECT `my col`, ?, ? FROM `db`.`t`"
        );
        assert_eq!(my("SELECT 1 /*! secret */ -- secret"), "SELECT ?");
        assert_eq!(my("INSERT INTO t VALUES ('a \\' secret that goes on"), "INSERT INTO t VALUES (?");
        assert_eq!(my("SELECT \"unterminated secret"), "SELECT ?");
        assert_eq!(my("SELECT `unterminated secret"), "SELECT ?");
        assert_eq!(my("SELECT $1"), "SELECT $ ?", "no dollar quoting in MySQL");
        let uamp = my("SELECT U&\"secret\"\"\"");
        assert!(!uamp.contains("secret") && !uamp.contains('"'), "U&\"…\" is PostgreSQL's, in MySQL a string: {uamp}");
        let q = sanitize_as("UPDATE `items` SET n = n + 1 WHERE name = 'x'", Dialect::Mysql);
        assert_eq!((q.operation.as_deref(), q.collection.as_deref()), (Some("UPDATE"), Some("`items`")));
        assert_eq!(sanitize("SELECT \"ident\"").text, "SELECT \"ident\"", "PostgreSQL keeps quoted identifiers");
    }

    #[test]
    fn operation_and_table() {
        let op = |s: &str| {
            let q = sanitize(s);
            (q.operation, q.collection)
        };
        let some = |a: &str, b: Option<&str>| (Some(a.to_owned()), b.map(str::to_owned));
        assert_eq!(op("SELECT id FROM users WHERE id = $1"), some("SELECT", Some("users")));
        assert_eq!(op("select * from public.orders"), some("SELECT", Some("public.orders")));
        assert_eq!(op("SELECT * FROM a JOIN b ON a.id = b.id"), some("SELECT", None));
        assert_eq!(op("SELECT * FROM a, b"), some("SELECT", None));
        assert_eq!(op("SELECT * FROM (SELECT 1) s"), some("SELECT", None));
        assert_eq!(op("insert into items (name) values ('x')"), some("INSERT", Some("items")));
        assert_eq!(op("UPDATE \"Items\" SET n = n + 1"), some("UPDATE", Some("\"Items\"")));
        assert_eq!(op("DELETE FROM items WHERE id = 3"), some("DELETE", Some("items")));
        assert_eq!(op("BEGIN"), some("BEGIN", None));
        assert_eq!(op("SELEC 1"), some("SELEC", None));
        assert_eq!(op("(SELECT 1)"), some("SELECT", None));
        assert_eq!(op("?"), (None, None));
        assert_eq!(op(""), (None, None));
    }
}
