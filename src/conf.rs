//! The nats-server configuration file format.
//!
//! This module owns reading configuration text in the format of nats-server's `conf` package
//! into a tree of [`Value`]s that remember where they start ([`Pos`]). That covers lexing and
//! parsing, `$variable` resolution (earlier keys of the enclosing maps first, then the
//! environment) and `include` directives, whose files are merged into the map that names them.
//! It knows nothing about what a key means: turning the tree into server options and reporting
//! unknown keys or wrong types is the caller's job ([`Value::type_name`], the positions and
//! [`Entry::used_as_variable`] are there for its messages).
//!
//! # The format
//!
//! - A file is a map of `key value`, `key: value` or `key = value`, ended by a new line, `,` or
//!   `;`. The top level may be wrapped in `{ }`. `#` and `//` start comments. Keys may be quoted.
//! - Maps `{ ... }` (no separator needed after the key) and arrays `[ ... ]`, whose elements
//!   are separated by `,` or new lines and may be of mixed types.
//! - Strings: `"double"` (escapes `\xXX \t \n \r \" \\` only), `'single'` (as written),
//!   unquoted (up to a blank, new line, `,`, `;`, `]` or `}`; escapes as in double quotes), and
//!   blocks `( ... )`, which end at a `)` alone at the start of a line; their value is the text
//!   between the parentheses.
//! - Booleans `true false yes no on off` in any case; integers with an optional size suffix in
//!   any case (`k` = 1000, `kb`/`ki`/`kib` = 1024, then `m g t p e` likewise); negative
//!   integers; floats; ISO8601 Zulu dates (`2021-01-01T00:00:00Z`), kept as text.
//! - `$NAME` copies the value of the key `NAME` defined earlier in the same or an enclosing
//!   map, or else parses the environment variable `NAME` as a value. Unquoted values starting
//!   with `$2a$` are bcrypt hashes, not variables.
//! - `include path` (path unquoted or quoted) merges the top-level keys of another file in
//!   place, the path being relative to the directory of the including file.
//! - A later duplicate key replaces the earlier one.
//!
//! # Differences from nats-server
//!
//! Corners of nats-server's lexer that turn a broken file into a silently different
//! configuration, or crash the server, are errors here:
//! - an integer with an unknown suffix such as `1kbb` (nats-server drops the key);
//! - an integer that overflows once its suffix is applied (nats-server wraps it);
//! - a key without a value at the end of the file, unless it is only punctuation such as the
//!   `}` closing a braced top level (nats-server drops it);
//! - a string still open at the end of the file (nats-server ignores it, and whatever is open
//!   around it, when nothing follows its opening quote or its last escape);
//! - include and environment variable cycles (nats-server overflows its stack); maps and
//!   arrays nest at most [`MAX_NESTING`] deep, includes at most [`MAX_INCLUDE_DEPTH`] deep.
//!
//! An absolute include path is used as is (nats-server appends it to the including file's
//! directory, so it never works there).
//!
//! The other quirks are kept, since a configuration that works with nats-server must read the
//! same here:
//! - an integer directly followed by `]` takes the `]` into a string, so `[1, 2]` is an error
//!   (with a hint) while `[1, 2 ]` is two integers and `[1kb]` is the string `1kb`;
//! - a `'` ends an unquoted string (`ab'` is `ab`), which is then never a boolean or variable;
//! - in a map, not at the top level, a value may start on a later line after `key:`;
//! - a `}` starting a line at the top level is a key;
//! - a lone `/` after a value is a blank at the top level and a separator in maps and arrays;
//!   it is skipped where a map key may start, and cannot start a top-level key or an array
//!   value.

#![forbid(unsafe_code)]

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How deep maps and arrays may nest, across includes and environment variables.
pub const MAX_NESTING: usize = 128;

/// How deep includes may nest.
pub const MAX_INCLUDE_DEPTH: usize = 16;

/// How deep environment variables may refer to other environment variables.
const MAX_ENV_DEPTH: usize = 16;

/// An unquoted value with this prefix is a bcrypt hash, not a variable.
const BCRYPT_PREFIX: &str = "$2a$";

/// The key under which the text of an environment variable is parsed, as nats-server does.
const ENV_KEY: &str = "pk";

/// Where a value or key starts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pos {
    /// The file: the path given to [`parse_file`] or [`parse_str`], or an included file as
    /// the including file's directory joined with the include path.
    pub file: Arc<PathBuf>,
    /// The line, from 1.
    pub line: u32,
    /// The column, from 1, in characters. A quoted key or value starts at its opening quote,
    /// a variable at its `$`, a map, array or block at its opening bracket.
    pub col: u32,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.col)
    }
}

/// A configuration value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A quoted, unquoted or block string.
    Str(String),
    /// An integer, size suffix applied.
    Int(i64),
    /// A float.
    Float(f64),
    /// A boolean (`true yes on`, `false no off`).
    Bool(bool),
    /// An ISO8601 Zulu date and time, as written (`2021-01-01T00:00:00Z`).
    Date(String),
    /// An array.
    Array(Vec<Item>),
    /// A map.
    Map(Map),
}

impl Value {
    /// How a value is named in "wrong type" messages: "string", "integer", "float",
    /// "boolean", "date", "array" or "map".
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Str(_) => "string",
            Value::Int(_) => "integer",
            Value::Float(_) => "float",
            Value::Bool(_) => "boolean",
            Value::Date(_) => "date",
            Value::Array(_) => "array",
            Value::Map(_) => "map",
        }
    }
}

/// A value and where it starts. A value copied from a variable starts at the `$` that
/// referred to it; the values inside a map or array read from an environment variable all
/// start there too.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// The value.
    pub value: Value,
    /// Where it starts.
    pub pos: Pos,
}

/// A map keeps its keys in file order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Map {
    /// The entries, in the order in which their (last) definitions appear; keys are unique.
    pub entries: Vec<Entry>,
}

/// One key of a map and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The key, unquoted.
    pub key: String,
    /// Where the key starts.
    pub key_pos: Pos,
    /// The value.
    pub item: Item,
    /// Whether a `$variable` referred to this key. nats-server does not report such keys as
    /// unknown fields, so a caller checking for unknown keys should skip them.
    pub used_as_variable: bool,
}

impl Map {
    /// The entry for `key` (case-sensitive, exact match).
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.key == key)
    }

    /// The entries in file order.
    pub fn iter(&self) -> std::slice::Iter<'_, Entry> {
        self.entries.iter()
    }

    /// Adds an entry; an existing entry with the same key is replaced and the new one goes
    /// last.
    fn insert(&mut self, entry: Entry) {
        self.entries.retain(|e| e.key != entry.key);
        self.entries.push(entry);
    }
}

/// Why a configuration could not be read.
#[derive(Debug)]
pub enum ConfError {
    /// The text is not valid: bad syntax, an undefined variable, an include cycle or an
    /// integer out of range. Displays as `<file>:<line>:<col>: <message>`.
    Syntax {
        /// Where the problem is; for an unterminated string, map, array or block, where it
        /// opens.
        pos: Pos,
        /// What is wrong.
        message: String,
    },
    /// A configuration file or an included file could not be read.
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
        /// The `include` directive that named the file; `None` for the file given to
        /// [`parse_file`].
        included_at: Option<Pos>,
    },
}

impl ConfError {
    /// The message without the position.
    fn message(&self) -> String {
        match self {
            ConfError::Syntax { message, .. } => message.clone(),
            ConfError::Io { .. } => self.to_string(),
        }
    }
}

impl fmt::Display for ConfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfError::Syntax { pos, message } => write!(f, "{pos}: {message}"),
            ConfError::Io {
                path,
                source,
                included_at: Some(at),
            } => write!(
                f,
                "{at}: error opening include file {}: {source}",
                path.display()
            ),
            ConfError::Io {
                path,
                source,
                included_at: None,
            } => write!(f, "error opening config file {}: {source}", path.display()),
        }
    }
}

impl std::error::Error for ConfError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfError::Syntax { .. } => None,
            ConfError::Io { source, .. } => Some(source),
        }
    }
}

/// Reads and parses the configuration file at `path`, its includes and variables.
pub fn parse_file(path: &Path) -> Result<Map, ConfError> {
    let text = read_text(path, None)?;
    parse_str(&text, path)
}

/// Parses configuration text. `path` names the source in positions and anchors relative
/// includes.
pub fn parse_str(src: &str, path: &Path) -> Result<Map, ConfError> {
    let mut session = Session::default();
    session.files.push(canonical(path));
    Parser::new(src, path, &mut session).document()
}

/// Reads a file as text (invalid UTF-8 replaced, as Go's lexer does).
fn read_text(path: &Path, included_at: Option<&Pos>) -> Result<String, ConfError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        Err(source) => Err(ConfError::Io {
            path: path.to_path_buf(),
            source,
            included_at: included_at.cloned(),
        }),
    }
}

/// The path that identifies a file for include cycle detection.
fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// State shared by the parsers of one configuration: the main one, those of its includes and
/// those of environment variable texts.
#[derive(Default)]
struct Session {
    /// The files being parsed, outermost first (canonical paths).
    files: Vec<PathBuf>,
    /// The environment variables being parsed, outermost first.
    env: Vec<String>,
    /// How many maps and arrays are open.
    depth: usize,
}

/// What a key position held.
enum Key {
    /// A key and where it starts.
    Named(String, Pos),
    /// An include directive, already merged.
    Include,
}

/// The parser of one text: a cursor over its characters plus the maps being built.
struct Parser<'s> {
    text: Vec<char>,
    at: usize,
    line: u32,
    col: u32,
    file: Arc<PathBuf>,
    dir: PathBuf,
    /// The maps being built, outermost first: the scopes of variables.
    scopes: Vec<Map>,
    /// How many arrays are open in this text.
    open_arrays: usize,
    /// The last `]` read into a string right after an integer in an array (`[1]`), for a
    /// hint when the array then lacks its end.
    bracket_in_string: Option<Pos>,
    session: &'s mut Session,
}

impl<'s> Parser<'s> {
    fn new(src: &str, path: &Path, session: &'s mut Session) -> Self {
        let file = Arc::new(path.to_path_buf());
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Parser::with_origin(src, file, dir, session)
    }

    fn with_origin(src: &str, file: Arc<PathBuf>, dir: PathBuf, session: &'s mut Session) -> Self {
        let src = src.strip_prefix('\u{feff}').unwrap_or(src);
        Parser {
            text: src.chars().collect(),
            at: 0,
            line: 1,
            col: 1,
            file,
            dir,
            scopes: Vec::new(),
            open_arrays: 0,
            bracket_in_string: None,
            session,
        }
    }

    // ----- cursor -----

    fn peek(&self) -> Option<char> {
        self.text.get(self.at).copied()
    }

    fn peek_second(&self) -> Option<char> {
        self.text.get(self.at + 1).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.at += 1;
        if c == '\n' {
            self.line = self.line.saturating_add(1);
            self.col = 1;
        } else {
            self.col = self.col.saturating_add(1);
        }
        Some(c)
    }

    fn bump_while(&mut self, f: impl Fn(char) -> bool) {
        while self.peek().is_some_and(&f) {
            self.bump();
        }
    }

    fn pos(&self) -> Pos {
        Pos {
            file: Arc::clone(&self.file),
            line: self.line,
            col: self.col,
        }
    }

    /// The text from `start` to the cursor.
    fn since(&self, start: usize) -> String {
        self.between(start, self.at)
    }

    fn between(&self, start: usize, end: usize) -> String {
        self.text
            .get(start..end)
            .map(|s| s.iter().collect())
            .unwrap_or_default()
    }

    fn fail<T>(&self, pos: Pos, message: impl Into<String>) -> Result<T, ConfError> {
        Err(ConfError::Syntax {
            pos,
            message: message.into(),
        })
    }

    fn fail_here<T>(&self, message: impl Into<String>) -> Result<T, ConfError> {
        self.fail(self.pos(), message)
    }

    fn at_comment(&self) -> bool {
        match self.peek() {
            Some('#') => true,
            Some('/') => self.peek_second() == Some('/'),
            _ => false,
        }
    }

    /// Skips to the end of the line (the new line itself is left).
    fn skip_comment(&mut self) {
        self.bump_while(|c| !is_newline(c));
    }

    /// Skips white space, new lines included, and comments.
    fn skip_space_and_comments(&mut self) {
        loop {
            if self.at_comment() {
                self.skip_comment();
            } else if self.peek().is_some_and(char::is_whitespace) {
                self.bump();
            } else {
                return;
            }
        }
    }

    fn skip_blanks(&mut self) {
        self.bump_while(is_blank);
    }

    // ----- maps -----

    /// Parses the whole text as the top-level map.
    fn document(mut self) -> Result<Map, ConfError> {
        self.scopes.push(Map::default());
        while self.top_entry()? {}
        Ok(self.scopes.pop().unwrap_or_default())
    }

    /// Parses one top-level entry or include; false at the end of the text.
    fn top_entry(&mut self) -> Result<bool, ConfError> {
        self.skip_space_and_comments();
        match self.peek() {
            None => return Ok(false),
            Some('{') => {
                self.bump();
                return Ok(true);
            }
            Some('/') => return self.fail_here("a top-level key cannot start with '/', quote it"),
            _ => {}
        }
        if let Key::Named(key, key_pos) = self.key()? {
            if !self.key_end() {
                return self.dangling_key(key, key_pos);
            }
            let item = self.value()?;
            self.set(key, key_pos, item);
        }
        self.top_value_end()?;
        Ok(true)
    }

    /// A top-level key at the end of the text. nats-server drops it; here only punctuation
    /// is dropped, such as the `}` closing a braced top level or a stray `;`.
    fn dangling_key(&self, key: String, key_pos: Pos) -> Result<bool, ConfError> {
        if key.chars().all(|c| matches!(c, '}' | ']' | ',' | ';')) {
            return Ok(false);
        }
        self.fail(key_pos, format!("key '{key}' has no value"))
    }

    /// After a top-level value: blanks, then a comment, new line, `,`, `;`, `}` or the end.
    fn top_value_end(&mut self) -> Result<(), ConfError> {
        self.skip_blanks();
        while self.peek() == Some('/') && !self.at_comment() {
            // A lone `/` counts as a blank here in nats-server.
            self.bump();
            self.skip_blanks();
        }
        if self.at_comment() {
            self.skip_comment();
            return Ok(());
        }
        match self.peek() {
            None => Ok(()),
            Some(c) if is_newline(c) || matches!(c, ',' | ';' | '}') => {
                self.bump();
                Ok(())
            }
            Some(c) => self.fail_here(format!(
                "expected a new line, ',', ';' or a comment after a top-level value, found {}",
                shown(c)
            )),
        }
    }

    /// Parses a map; the cursor is on its `{`.
    fn map(&mut self, open: &Pos) -> Result<Value, ConfError> {
        self.enter(open)?;
        self.bump();
        self.scopes.push(Map::default());
        let result = self.map_entries(open);
        let map = self.scopes.pop().unwrap_or_default();
        self.leave();
        result.map(|()| Value::Map(map))
    }

    fn map_entries(&mut self, open: &Pos) -> Result<(), ConfError> {
        loop {
            self.skip_space_and_comments();
            match self.peek() {
                None => return self.fail(open.clone(), "unterminated map"),
                Some('}') => {
                    self.bump();
                    return Ok(());
                }
                Some(']') => return self.fail_here("unexpected ']' in a map, expected a key"),
                Some('/') => {
                    // nats-server skips a lone `/` where a key may start in a map.
                    self.bump();
                    continue;
                }
                _ => {}
            }
            if let Key::Named(key, key_pos) = self.key()? {
                if !self.key_end() {
                    return self.fail(open.clone(), "unterminated map");
                }
                let item = self.map_value()?;
                self.set(key, key_pos, item);
            }
            if self.map_value_end(open)? {
                return Ok(());
            }
        }
    }

    /// A value in a map. Unlike at the top level, it may start on a later line.
    fn map_value(&mut self) -> Result<Item, ConfError> {
        self.bump_while(char::is_whitespace);
        if self.peek() == Some(',') {
            return self.fail_here("unexpected ',', expected a map value");
        }
        self.value()
    }

    /// After a value in a map: true at the closing `}`.
    fn map_value_end(&mut self, open: &Pos) -> Result<bool, ConfError> {
        self.skip_blanks();
        if self.at_comment() {
            self.skip_comment();
        }
        match self.peek() {
            None => self.fail(open.clone(), "unterminated map"),
            Some('}') => {
                self.bump();
                Ok(true)
            }
            // A lone `/` separates values in nats-server.
            Some(c) if is_newline(c) || matches!(c, ',' | ';' | '/') => {
                self.bump();
                Ok(false)
            }
            Some(c) => self.fail_here(format!(
                "expected a new line, ',', ';' or '}}' after a map value, found {}",
                shown(c)
            )),
        }
    }

    /// Adds an entry to the innermost map.
    fn set(&mut self, key: String, key_pos: Pos, item: Item) {
        if let Some(scope) = self.scopes.last_mut() {
            scope.insert(Entry {
                key,
                key_pos,
                item,
                used_as_variable: false,
            });
        }
    }

    /// Counts a map or array opening at `open` against [`MAX_NESTING`].
    fn enter(&mut self, open: &Pos) -> Result<(), ConfError> {
        if self.session.depth >= MAX_NESTING {
            return self.fail(
                open.clone(),
                format!("maps and arrays are nested more than {MAX_NESTING} deep"),
            );
        }
        self.session.depth += 1;
        Ok(())
    }

    fn leave(&mut self) {
        self.session.depth = self.session.depth.saturating_sub(1);
    }

    // ----- keys and includes -----

    /// Parses a key, or an include directive (which it merges).
    fn key(&mut self) -> Result<Key, ConfError> {
        let pos = self.pos();
        match self.peek() {
            Some(q @ ('"' | '\'')) => return Ok(Key::Named(self.raw_quoted(q, &pos)?, pos)),
            Some(c) if is_key_separator(c) => {
                return self.fail(pos, format!("unexpected key separator {}", shown(c)))
            }
            _ => {}
        }
        let start = self.at;
        self.bump_while(|c| !c.is_whitespace() && !is_key_separator(c));
        let key = self.since(start);
        if key.eq_ignore_ascii_case("include") && self.peek().is_some_and(char::is_whitespace) {
            self.include(&pos)?;
            return Ok(Key::Include);
        }
        Ok(Key::Named(key, pos))
    }

    /// After a key: white space (new lines included), then an optional `=` or `:`. False if
    /// the text ends first.
    fn key_end(&mut self) -> bool {
        self.bump_while(char::is_whitespace);
        match self.peek() {
            None => false,
            Some(c) if is_key_separator(c) => {
                self.bump();
                true
            }
            Some(_) => true,
        }
    }

    /// Parses the path of an include directive at `at` and merges the file.
    fn include(&mut self, at: &Pos) -> Result<(), ConfError> {
        self.skip_blanks();
        let pos = self.pos();
        let name = match self.peek() {
            Some(q @ ('"' | '\'')) => self.raw_quoted(q, &pos)?,
            Some(c) if c.is_ascii_digit() || is_newline(c) || "[{(-\\".contains(c) => {
                return self.fail(
                    pos,
                    format!("expected a file name after include, found {}", shown(c)),
                )
            }
            _ => {
                let start = self.at;
                self.bump_while(|c| !c.is_whitespace() && !matches!(c, ',' | ';' | ']' | '}'));
                self.since(start)
            }
        };
        if name.is_empty() {
            return self.fail(pos, "expected a file name after include");
        }
        self.merge_include(&name, at)
    }

    /// Parses the file `name` (relative to this file's directory) and merges its top-level
    /// entries into the innermost map.
    fn merge_include(&mut self, name: &str, at: &Pos) -> Result<(), ConfError> {
        if self.session.files.len() > MAX_INCLUDE_DEPTH {
            return self.fail(
                at.clone(),
                format!("includes are nested more than {MAX_INCLUDE_DEPTH} deep"),
            );
        }
        let path = self.dir.join(name);
        let text = read_text(&path, Some(at))?;
        let canon = canonical(&path);
        if self.session.files.contains(&canon) {
            return self.fail(
                at.clone(),
                format!("include cycle: {} is already being parsed", path.display()),
            );
        }
        self.session.files.push(canon);
        let parsed = Parser::new(&text, &path, self.session).document();
        self.session.files.pop();
        for entry in parsed?.entries {
            if let Some(scope) = self.scopes.last_mut() {
                scope.insert(entry);
            }
        }
        Ok(())
    }

    // ----- values -----

    /// Parses a value after blanks.
    fn value(&mut self) -> Result<Item, ConfError> {
        self.skip_blanks();
        let pos = self.pos();
        let value = match self.peek() {
            Some(c) if is_newline(c) => {
                return self.fail(pos, "expected a value, found a new line")
            }
            Some('[') => self.array(&pos)?,
            Some('{') => self.map(&pos)?,
            Some('"') => Value::Str(self.double_quoted(&pos)?),
            Some('\'') => Value::Str(self.raw_quoted('\'', &pos)?),
            Some('(') => Value::Str(self.block(&pos)?),
            Some('-') => self.negative(&pos)?,
            Some(c) if c.is_ascii_digit() => self.number(&pos)?,
            Some('.') => return self.fail(pos, "floats must start with a digit"),
            _ => return self.unquoted(pos),
        };
        Ok(Item { value, pos })
    }

    /// Parses an array; the cursor is on its `[`.
    fn array(&mut self, open: &Pos) -> Result<Value, ConfError> {
        self.enter(open)?;
        self.bump();
        self.open_arrays += 1;
        let mut items = Vec::new();
        let result = self.array_items(open, &mut items);
        self.open_arrays -= 1;
        self.leave();
        result.map(|()| Value::Array(items))
    }

    fn array_items(&mut self, open: &Pos, items: &mut Vec<Item>) -> Result<(), ConfError> {
        loop {
            self.skip_space_and_comments();
            match self.peek() {
                None => return self.fail_in_array(open.clone(), "unterminated array".into()),
                Some(',') => return self.fail_here("unexpected ',' in an array, expected a value"),
                Some('/') => {
                    return self.fail_here("an array value cannot start with '/', quote it")
                }
                Some(']') => {
                    self.bump();
                    return Ok(());
                }
                _ => {}
            }
            items.push(self.value()?);
            if self.array_value_end(open)? {
                return Ok(());
            }
        }
    }

    /// After an array element: true at the closing `]`.
    fn array_value_end(&mut self, open: &Pos) -> Result<bool, ConfError> {
        self.skip_blanks();
        if self.at_comment() {
            self.skip_comment();
        }
        match self.peek() {
            None => self.fail_in_array(open.clone(), "unterminated array".into()),
            Some(']') => {
                self.bump();
                Ok(true)
            }
            // A lone `/` separates values in nats-server.
            Some(c) if is_newline(c) || matches!(c, ',' | '/') => {
                self.bump();
                Ok(false)
            }
            Some(c) => self.fail_in_array(
                self.pos(),
                format!(
                    "expected a new line, ',' or ']' after an array value, found {}",
                    shown(c)
                ),
            ),
        }
    }

    /// An error in an array, with a hint if an integer swallowed a `]` earlier.
    fn fail_in_array<T>(&self, pos: Pos, message: String) -> Result<T, ConfError> {
        let Some(at) = &self.bracket_in_string else {
            return self.fail(pos, message);
        };
        self.fail(
            pos,
            format!(
                "{message} (the ']' on line {} column {} directly follows an integer, so it was \
                 read as part of a string, as nats-server does; put a space or ',' before it)",
                at.line, at.col
            ),
        )
    }

    /// A string between `q` quotes, taken as written; the cursor is on the opening quote.
    fn raw_quoted(&mut self, q: char, open: &Pos) -> Result<String, ConfError> {
        self.bump();
        let start = self.at;
        loop {
            match self.bump() {
                None => return self.fail(open.clone(), "unterminated string"),
                Some(c) if c == q => return Ok(self.between(start, self.at - 1)),
                Some(_) => {}
            }
        }
    }

    /// A string between double quotes, with escapes; the cursor is on the opening quote.
    fn double_quoted(&mut self, open: &Pos) -> Result<String, ConfError> {
        self.bump();
        let mut buf = Vec::new();
        loop {
            match self.peek() {
                None => return self.fail(open.clone(), "unterminated string"),
                Some('"') => {
                    self.bump();
                    return Ok(String::from_utf8_lossy(&buf).into_owned());
                }
                Some('\\') => self.escape(&mut buf)?,
                Some(c) => {
                    push_char(&mut buf, c);
                    self.bump();
                }
            }
        }
    }

    /// An escape sequence; the cursor is on the backslash. `\xXX` adds a byte, so the text
    /// is collected as bytes.
    fn escape(&mut self, buf: &mut Vec<u8>) -> Result<(), ConfError> {
        let pos = self.pos();
        self.bump();
        let byte = match self.bump() {
            Some('t') => b'\t',
            Some('n') => b'\n',
            Some('r') => b'\r',
            Some('"') => b'"',
            Some('\\') => b'\\',
            Some('x') => self.hex_byte(&pos)?,
            other => {
                return self.fail(
                    pos,
                    format!(
                        "invalid escape character {}, only \\xXX, \\t, \\n, \\r, \\\" and \\\\ are allowed",
                        shown_opt(other)
                    ),
                )
            }
        };
        buf.push(byte);
        Ok(())
    }

    /// The two hexadecimal digits after `\x`.
    fn hex_byte(&mut self, escape: &Pos) -> Result<u8, ConfError> {
        let hi = self.peek().and_then(|c| c.to_digit(16));
        let lo = self.peek_second().and_then(|c| c.to_digit(16));
        match (hi, lo) {
            (Some(hi), Some(lo)) => {
                self.bump();
                self.bump();
                Ok((hi * 16 + lo) as u8)
            }
            _ => self.fail(
                escape.clone(),
                "expected two hexadecimal digits after '\\x'",
            ),
        }
    }

    /// A block: the text between `(` and a `)` alone at the start of a line (followed by a
    /// new line or the end of the text). The cursor is on the `(`.
    fn block(&mut self, open: &Pos) -> Result<String, ConfError> {
        self.bump();
        let start = self.at;
        loop {
            match self.bump() {
                None => {
                    return self.fail(
                        open.clone(),
                        "unterminated block, it ends at a ')' alone at the start of a line",
                    )
                }
                Some(')') if self.closes_block() => return Ok(self.between(start, self.at - 1)),
                Some(_) => {}
            }
        }
    }

    /// Whether the `)` just read starts its line and ends it.
    fn closes_block(&self) -> bool {
        let after_newline = self.at >= 2 && self.text.get(self.at - 2) == Some(&'\n');
        after_newline && matches!(self.peek(), None | Some('\n'))
    }

    /// An unquoted string, boolean or variable.
    fn unquoted(&mut self, pos: Pos) -> Result<Item, ConfError> {
        let mut buf = Vec::new();
        let plain = self.unquoted_rest(&mut buf)?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let value = if plain {
            Value::Str(text)
        } else if let Some(b) = parse_bool(&text) {
            Value::Bool(b)
        } else if let Some(name) = text
            .strip_prefix('$')
            .filter(|_| !text.starts_with(BCRYPT_PREFIX))
        {
            return self.variable(name, pos);
        } else {
            Value::Str(text)
        };
        Ok(Item { value, pos })
    }

    /// Reads the rest of an unquoted string into `buf`: up to a blank, new line, `,`, `;`,
    /// `]`, `}` or the end, or through a `'`. True if it can only be a string (neither a
    /// boolean nor a variable): if it had escapes or ended at a `'`, as in nats-server.
    fn unquoted_rest(&mut self, buf: &mut Vec<u8>) -> Result<bool, ConfError> {
        let mut escaped = false;
        loop {
            match self.peek() {
                None => return Ok(escaped),
                Some(c) if ends_unquoted(c) => return Ok(escaped),
                Some('\'') => {
                    self.bump();
                    return Ok(true);
                }
                Some('\\') => {
                    self.escape(buf)?;
                    escaped = true;
                }
                Some(c) => {
                    push_char(buf, c);
                    self.bump();
                }
            }
        }
    }

    /// Continues an unquoted string whose first characters (from `start`) were read as a
    /// number.
    fn number_as_string(&mut self, start: usize) -> Result<Value, ConfError> {
        let mut buf = self.since(start).into_bytes();
        self.unquoted_rest(&mut buf)?;
        Ok(Value::Str(String::from_utf8_lossy(&buf).into_owned()))
    }

    /// Something starting with a digit: an integer, float, date, or a string such as an IP
    /// address (`127.0.0.1:4222`) or a duration (`2s`).
    fn number(&mut self, pos: &Pos) -> Result<Value, ConfError> {
        let start = self.at;
        self.bump_while(|c| c.is_ascii_digit());
        match self.peek() {
            Some('-') if self.at - start == 4 => {
                self.bump();
                self.date(start, pos)
            }
            Some('-') => {
                self.fail_here("dates must be in full ISO8601 Zulu form (2006-01-02T15:04:05Z)")
            }
            Some('.') => self.float_or_ip(start),
            Some(c) if is_size_suffix(c) => self.suffixed(start, pos),
            Some(c) if !ends_number(c) => {
                // nats-server takes this character as written and reads on as a string.
                if c == ']' && self.open_arrays > 0 {
                    self.bracket_in_string = Some(self.pos());
                }
                self.bump();
                self.number_as_string(start)
            }
            _ => self.integer(start, pos),
        }
    }

    /// A negative integer or float; the cursor is on the `-`.
    fn negative(&mut self, pos: &Pos) -> Result<Value, ConfError> {
        let start = self.at;
        self.bump();
        if !self.peek().is_some_and(|c| c.is_ascii_digit()) {
            return self.fail_here(format!(
                "expected a digit after '-', found {}",
                shown_opt(self.peek())
            ));
        }
        self.bump_while(|c| c.is_ascii_digit());
        match self.peek() {
            Some('.') => self.float_or_ip(start),
            Some(c) if is_size_suffix(c) => self.suffixed(start, pos),
            _ => self.integer(start, pos),
        }
    }

    /// After the digits and a size suffix letter: the optional `b`/`i` letters, then an
    /// integer if the value ends there, else a string (`1kx`).
    fn suffixed(&mut self, start: usize, pos: &Pos) -> Result<Value, ConfError> {
        self.bump();
        self.bump_while(|c| matches!(c, 'b' | 'B' | 'i' | 'I'));
        match self.peek() {
            Some(c) if !ends_number(c) && !c.is_ascii_digit() => self.number_as_string(start),
            _ => self.integer(start, pos),
        }
    }

    /// The integer from `start` to the cursor: digits (maybe after `-`) and a size suffix.
    fn integer(&self, start: usize, pos: &Pos) -> Result<Value, ConfError> {
        let text = self.since(start);
        let split = text
            .find(|c: char| !c.is_ascii_digit() && c != '-')
            .unwrap_or(text.len());
        let (digits, suffix) = text.split_at(split);
        let Some(multiplier) = size_multiplier(suffix) else {
            return self.fail(
                pos.clone(),
                format!("unknown size suffix in integer '{text}'"),
            );
        };
        match digits
            .parse::<i64>()
            .ok()
            .and_then(|n| n.checked_mul(multiplier))
        {
            Some(n) => Ok(Value::Int(n)),
            None => self.fail(pos.clone(), format!("integer '{text}' is out of range")),
        }
    }

    /// After digits and a `.`: a float, or a string if a second `.` makes it an IP address.
    fn float_or_ip(&mut self, start: usize) -> Result<Value, ConfError> {
        self.bump();
        if !self.peek().is_some_and(|c| c.is_ascii_digit()) {
            return self.fail_here(format!(
                "floats must have a digit after the '.', found {}",
                shown_opt(self.peek())
            ));
        }
        self.bump_while(|c| c.is_ascii_digit());
        if self.peek() == Some('.') {
            self.bump_while(|c| c.is_ascii_digit() || matches!(c, '.' | ':' | '-'));
            return Ok(Value::Str(self.since(start)));
        }
        let text = self.since(start);
        match text.parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(Value::Float(f)),
            _ => self.fail(self.pos(), format!("float '{text}' is out of range")),
        }
    }

    /// After `YYYY-`: the rest of `YYYY-MM-DDTHH:MM:SSZ`.
    fn date(&mut self, start: usize, pos: &Pos) -> Result<Value, ConfError> {
        for expected in "00-00T00:00:00Z".chars() {
            let c = self.peek();
            let ok = match expected {
                '0' => c.is_some_and(|c| c.is_ascii_digit()),
                _ => c == Some(expected),
            };
            if !ok {
                let what = if expected == '0' {
                    "a digit".to_string()
                } else {
                    format!("'{expected}'")
                };
                return self.fail_here(format!(
                    "expected {what} in ISO8601 date, found {}",
                    shown_opt(c)
                ));
            }
            self.bump();
        }
        let text = self.since(start);
        if !valid_date(&text) {
            return self.fail(
                pos.clone(),
                format!("expected Zulu formatted DateTime, but got '{text}'"),
            );
        }
        Ok(Value::Date(text))
    }

    // ----- variables -----

    /// Refuses environment variables that refer to themselves or nest too deeply.
    fn check_env_nesting(&self, name: &str, pos: &Pos) -> Result<(), ConfError> {
        let problem = if self.session.env.iter().any(|n| n == name) {
            "refers to itself"
        } else if self.session.env.len() >= MAX_ENV_DEPTH {
            "is nested too deeply"
        } else {
            return Ok(());
        };
        let line = pos.line;
        self.fail(
            pos.clone(),
            format!("variable reference for '{name}' on line {line} {problem}"),
        )
    }

    /// The value of `$name` at `pos`: the key `name` of the innermost map that has it (which
    /// is then marked as used), else the environment variable `name` parsed as a value.
    fn variable(&mut self, name: &str, pos: Pos) -> Result<Item, ConfError> {
        for scope in self.scopes.iter_mut().rev() {
            if let Some(entry) = scope.entries.iter_mut().find(|e| e.key == name) {
                entry.used_as_variable = true;
                let value = entry.item.value.clone();
                return Ok(Item { value, pos });
            }
        }
        match env_text(name) {
            Some(text) => {
                let value = self.env_value(name, &text, &pos)?;
                Ok(Item { value, pos })
            }
            None => self.fail(
                pos.clone(),
                format!(
                    "variable reference for '{name}' on line {} can not be found",
                    pos.line
                ),
            ),
        }
    }

    /// Parses the text of environment variable `name` as nats-server does: as the value of a
    /// key in a configuration of its own. Its values all start at `pos`.
    fn env_value(&mut self, name: &str, text: &str, pos: &Pos) -> Result<Value, ConfError> {
        let line = pos.line;
        self.check_env_nesting(name, pos)?;
        self.session.env.push(name.to_string());
        let src = format!("{ENV_KEY}={text}");
        let file = Arc::clone(&self.file);
        let parsed = Parser::with_origin(&src, file, self.dir.clone(), self.session).document();
        self.session.env.pop();
        let parsed = parsed.map_err(|e| ConfError::Syntax {
            pos: pos.clone(),
            message: format!(
                "variable reference for '{name}' on line {line} could not be parsed: {}",
                e.message()
            ),
        })?;
        match parsed.entries.into_iter().find(|e| e.key == ENV_KEY) {
            Some(mut entry) => {
                relocate(&mut entry.item, pos);
                Ok(entry.item.value)
            }
            None => self.fail(
                pos.clone(),
                format!("variable reference for '{name}' on line {line} can not be found"),
            ),
        }
    }
}

/// The text of environment variable `name`, if set (names that cannot be looked up are not).
fn env_text(name: &str) -> Option<String> {
    if name.is_empty() || name.contains(['=', '\0']) {
        return None;
    }
    std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
}

/// Moves an item and everything in it to `pos`.
fn relocate(item: &mut Item, pos: &Pos) {
    item.pos = pos.clone();
    match &mut item.value {
        Value::Array(items) => items.iter_mut().for_each(|i| relocate(i, pos)),
        Value::Map(map) => {
            for entry in &mut map.entries {
                entry.key_pos = pos.clone();
                relocate(&mut entry.item, pos);
            }
        }
        _ => {}
    }
}

/// Space or tab.
fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

fn is_newline(c: char) -> bool {
    c == '\n' || c == '\r'
}

fn is_key_separator(c: char) -> bool {
    c == '=' || c == ':'
}

/// Whether `c` ends an unquoted string.
fn ends_unquoted(c: char) -> bool {
    is_blank(c) || is_newline(c) || matches!(c, ',' | ';' | ']' | '}')
}

/// Whether `c` ends an integer (note: not `]`, as in nats-server).
fn ends_number(c: char) -> bool {
    is_blank(c) || is_newline(c) || matches!(c, ',' | ';' | '}')
}

fn is_size_suffix(c: char) -> bool {
    matches!(c.to_ascii_lowercase(), 'k' | 'm' | 'g' | 't' | 'p' | 'e')
}

/// The multiplier of a size suffix (any case), `None` if unknown.
fn size_multiplier(suffix: &str) -> Option<i64> {
    let suffix = suffix.to_ascii_lowercase();
    let mut letters = suffix.chars();
    let Some(letter) = letters.next() else {
        return Some(1);
    };
    let exponent = "kmgtpe".find(letter)? as u32 + 1;
    match letters.as_str() {
        "" => Some(10_i64.pow(3 * exponent)),
        "b" | "i" | "ib" => Some(1_i64 << (10 * exponent)),
        _ => None,
    }
}

fn parse_bool(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" => Some(true),
        "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Whether `YYYY-MM-DDTHH:MM:SSZ` (digits already checked) is a real date and time.
fn valid_date(text: &str) -> bool {
    let field = |range: std::ops::Range<usize>| -> u32 {
        text.get(range)
            .and_then(|s| s.parse().ok())
            .unwrap_or(u32::MAX)
    };
    let (year, month, day) = (field(0..4), field(5..7), field(8..10));
    let (hour, minute, second) = (field(11..13), field(14..16), field(17..19));
    (1..=12).contains(&month)
        && (1..=days_in_month(year, month)).contains(&day)
        && hour < 24
        && minute < 60
        && second < 60
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn push_char(buf: &mut Vec<u8>, c: char) {
    let mut utf8 = [0; 4];
    buf.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
}

/// A character for a message.
fn shown(c: char) -> String {
    match c {
        '\n' => "a new line".to_string(),
        '\r' => "a carriage return".to_string(),
        _ => format!("'{}'", c.escape_debug()),
    }
}

/// A character or the end of the text, for a message.
fn shown_opt(c: Option<char>) -> String {
    c.map_or_else(|| "the end of the file".to_string(), shown)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const FILE: &str = "test.conf";

    fn parse(src: &str) -> Map {
        parse_str(src, Path::new(FILE)).unwrap_or_else(|e| panic!("{src:?}: {e}"))
    }

    /// The line, column and message of the syntax error for `src`.
    fn syntax_error(src: &str) -> (u32, u32, String) {
        match parse_str(src, Path::new(FILE)) {
            Err(ConfError::Syntax { pos, message }) => (pos.line, pos.col, message),
            other => panic!("{src:?}: expected a syntax error, got {other:?}"),
        }
    }

    fn assert_error(src: &str, line: u32, col: u32, needle: &str) {
        let (l, c, message) = syntax_error(src);
        assert_eq!((l, c), (line, col), "{src:?}: {message}");
        assert!(
            message.contains(needle),
            "{src:?}: {message:?} lacks {needle:?}"
        );
    }

    fn entry<'a>(map: &'a Map, key: &str) -> &'a Entry {
        map.get(key)
            .unwrap_or_else(|| panic!("no key {key:?} in {map:?}"))
    }

    fn value<'a>(map: &'a Map, key: &str) -> &'a Value {
        &entry(map, key).item.value
    }

    fn map_of<'a>(map: &'a Map, key: &str) -> &'a Map {
        match value(map, key) {
            Value::Map(m) => m,
            other => panic!("{key}: not a map: {other:?}"),
        }
    }

    fn array_of<'a>(map: &'a Map, key: &str) -> &'a [Item] {
        match value(map, key) {
            Value::Array(a) => a,
            other => panic!("{key}: not an array: {other:?}"),
        }
    }

    /// The value of `v` in `v: <text>`.
    fn single(text: &str) -> Value {
        value(&parse(&format!("v: {text}")), "v").clone()
    }

    fn s(text: &str) -> Value {
        Value::Str(text.to_string())
    }

    fn lc(pos: &Pos) -> (u32, u32) {
        (pos.line, pos.col)
    }

    fn keys(map: &Map) -> Vec<&str> {
        map.iter().map(|e| e.key.as_str()).collect()
    }

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            static COUNT: AtomicUsize = AtomicUsize::new(0);
            let n = COUNT.fetch_add(1, Ordering::Relaxed);
            let dir =
                std::env::temp_dir().join(format!("natsconf-{}-{name}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create temp dir");
            TempDir(dir)
        }

        fn write(&self, rel: &str, text: &str) -> PathBuf {
            let path = self.0.join(rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).expect("create dir");
            }
            std::fs::write(&path, text).expect("write file");
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn key_value_separators() {
        let m =
            parse("port 4222\nport2: 4223\nport3 = 4224\nport4=4225\nport5:4226\nport6\n  4227\n");
        let expected = [
            ("port", 4222, (1, 1), (1, 6)),
            ("port2", 4223, (2, 1), (2, 8)),
            ("port3", 4224, (3, 1), (3, 9)),
            ("port4", 4225, (4, 1), (4, 7)),
            ("port5", 4226, (5, 1), (5, 7)),
            ("port6", 4227, (6, 1), (7, 3)),
        ];
        for (key, n, key_at, value_at) in expected {
            let e = entry(&m, key);
            assert_eq!(e.item.value, Value::Int(n), "{key}");
            assert_eq!(lc(&e.key_pos), key_at, "{key}");
            assert_eq!(lc(&e.item.pos), value_at, "{key}");
            assert_eq!(*e.key_pos.file, PathBuf::from(FILE));
            assert!(!e.used_as_variable);
        }
        assert_eq!(m.entries.len(), 6);
    }

    #[test]
    fn braced_top_level() {
        let m = parse("{\n  port: 4222\n}\n");
        assert_eq!(keys(&m), ["port"]);
        assert_eq!(lc(&entry(&m, "port").key_pos), (2, 3));
        let m = parse("{ port: 4222, debug: true }");
        assert_eq!(keys(&m), ["port", "debug"]);
        // As in nats-server, a `}` starting a line is a key, so it must end the file.
        assert_error("{\nport: 4222\n}\nfoo: 1", 4, 6, "after a top-level value");
    }

    #[test]
    fn value_terminators() {
        let m = parse("a: 1, b: 2; c: 3\nd: 4\r\ne: x;\n");
        assert_eq!(keys(&m), ["a", "b", "c", "d", "e"]);
        assert_eq!(value(&m, "e"), &s("x"));
        assert_eq!(lc(&entry(&m, "e").key_pos), (3, 1));
        let m = parse("m { a: 1, b: 2; c: 3\n d: 4 }");
        assert_eq!(keys(map_of(&m, "m")), ["a", "b", "c", "d"]);
        // Nothing after a separator is an empty string, as in nats-server.
        let m = parse("a:\u{20};b =");
        assert_eq!(value(&m, "a"), &s(""));
        assert_eq!(value(&m, "b"), &s(""));
        let m = parse("m { b }");
        assert_eq!(value(map_of(&m, "m"), "b"), &s(""));
        // In a map (not at the top level) a value may start on a later line.
        let m = parse("m { a:\n\n  1, b =\n }");
        assert_eq!(value(map_of(&m, "m"), "a"), &Value::Int(1));
        assert_eq!(lc(&entry(map_of(&m, "m"), "a").item.pos), (3, 3));
        assert_eq!(value(map_of(&m, "m"), "b"), &s(""));
        assert_error("m { a: , b: 1 }", 1, 8, "unexpected ','");
    }

    #[test]
    fn comments() {
        let src =
            "# hash\n// slash\na: 1 # trailing\nb: 2 // trailing\nc { # in map\n  d: 3 // x\n}\n\
                   e: [ # in array\n  1, # one\n  2 // two\n]\nf: a#b\ng: x//y\n";
        let m = parse(src);
        assert_eq!(keys(&m), ["a", "b", "c", "e", "f", "g"]);
        assert_eq!(value(map_of(&m, "c"), "d"), &Value::Int(3));
        let e: Vec<_> = array_of(&m, "e").iter().map(|i| i.value.clone()).collect();
        assert_eq!(e, [Value::Int(1), Value::Int(2)]);
        assert_eq!(value(&m, "f"), &s("a#b"));
        assert_eq!(value(&m, "g"), &s("x//y"));
    }

    #[test]
    fn maps() {
        let m = parse("cluster {\n  name: east\n  listen: 127.0.0.1:6222\n  nested { deep: true }\n}\nempty {}\nc2: { a = 1 }\n");
        let cluster = entry(&m, "cluster");
        assert_eq!(lc(&cluster.item.pos), (1, 9));
        let Value::Map(c) = &cluster.item.value else {
            panic!("not a map")
        };
        assert_eq!(keys(c), ["name", "listen", "nested"]);
        assert_eq!(lc(&entry(c, "name").key_pos), (2, 3));
        assert_eq!(lc(&entry(c, "name").item.pos), (2, 9));
        assert_eq!(value(c, "listen"), &s("127.0.0.1:6222"));
        let nested = entry(c, "nested");
        assert_eq!(lc(&nested.item.pos), (4, 10));
        let deep = entry(map_of(c, "nested"), "deep");
        assert_eq!((lc(&deep.key_pos), lc(&deep.item.pos)), ((4, 12), (4, 18)));
        assert_eq!(deep.item.value, Value::Bool(true));
        assert_eq!(value(&m, "empty"), &Value::Map(Map::default()));
        assert_eq!(value(map_of(&m, "c2"), "a"), &Value::Int(1));
        assert!(m.get("Cluster").is_none());
    }

    #[test]
    fn arrays() {
        let src = "a: [1, \"two\", 3.5, true, [x, y], { k: v }]\nb: [\n  one\n  two,\n  three\n]\nc: []\n\
                   d: [ { user: a, password: b }\n     { user: c } ]\ne: [1,]\nf: [1k , -1, 1.5, 1x, 1.2.3, 1kb]\n";
        let m = parse(src);
        let a = array_of(&m, "a");
        let cols: Vec<_> = a.iter().map(|i| lc(&i.pos)).collect();
        assert_eq!(cols, [(1, 5), (1, 8), (1, 15), (1, 20), (1, 26), (1, 34)]);
        assert_eq!(a[0].value, Value::Int(1));
        assert_eq!(a[1].value, s("two"));
        assert_eq!(a[2].value, Value::Float(3.5));
        assert_eq!(a[3].value, Value::Bool(true));
        let Value::Array(inner) = &a[4].value else {
            panic!("not an array")
        };
        assert_eq!(
            inner.iter().map(|i| i.value.clone()).collect::<Vec<_>>(),
            [s("x"), s("y")]
        );
        let Value::Map(k) = &a[5].value else {
            panic!("not a map")
        };
        assert_eq!(value(k, "k"), &s("v"));
        assert_eq!(lc(&entry(&m, "a").item.pos), (1, 4));
        let b: Vec<_> = array_of(&m, "b").iter().map(|i| i.value.clone()).collect();
        assert_eq!(b, [s("one"), s("two"), s("three")]);
        assert_eq!(lc(&array_of(&m, "b")[2].pos), (5, 3));
        assert!(array_of(&m, "c").is_empty());
        let d = array_of(&m, "d");
        assert_eq!(d.len(), 2);
        let Value::Map(second) = &d[1].value else {
            panic!("not a map")
        };
        assert_eq!(value(second, "user"), &s("c"));
        assert_eq!(lc(&d[1].pos), (9, 6));
        assert_eq!(array_of(&m, "e").len(), 1);
        // nats-server's lexer: a suffixed integer directly followed by ']' is a string.
        let f: Vec<_> = array_of(&m, "f").iter().map(|i| i.value.clone()).collect();
        assert_eq!(
            f,
            [
                Value::Int(1000),
                Value::Int(-1),
                Value::Float(1.5),
                s("1x"),
                s("1.2.3"),
                s("1kb")
            ]
        );
    }

    #[test]
    fn lone_slashes() {
        // As in nats-server: a blank after a top-level value, a separator in maps and arrays.
        let m = parse("a: \"x\" /\nm { b: \"y\"/c: 1 }\nr: [\"p\"/\"q\" ]\nk: /v\nm2 { /k: 1 }");
        assert_eq!(value(&m, "a"), &s("x"));
        assert_eq!(keys(map_of(&m, "m")), ["b", "c"]);
        assert_eq!(array_of(&m, "r").len(), 2);
        assert_eq!(value(&m, "k"), &s("/v"));
        assert_eq!(keys(map_of(&m, "m2")), ["k"]);
        assert_error("a: \"x\"/b: 2", 1, 8, "after a top-level value, found 'b'");
        assert_error("a: 1\n/k: 1", 2, 1, "cannot start with '/'");
        assert_error("a: [x, /y]", 1, 8, "cannot start with '/'");
        assert_eq!(
            value(&parse("\"/k\": [\"/y\"]"), "/k"),
            &Value::Array(vec![Item {
                value: s("/y"),
                pos: Pos {
                    file: Arc::new(PathBuf::from(FILE)),
                    line: 1,
                    col: 8
                }
            }])
        );
    }

    #[test]
    fn integer_directly_before_bracket() {
        // nats-server reads `1]` as a string, so the array never ends.
        let (line, col, message) = syntax_error("a: [1]");
        assert_eq!((line, col), (1, 4));
        assert!(message.contains("unterminated array"), "{message}");
        assert!(message.contains("line 1 column 6"), "{message}");
        assert_eq!(single("5]"), s("5]"));
    }

    #[test]
    fn strings() {
        let src = "dq: \"a\\tb\\nc\\rd\\\"e\\\\f\\x41\"\nsq: 'raw \\t $X \"'\nbare: hello\nhost: 0.0.0.0\n\
                   listen: 127.0.0.1:4222\nurl: nats://a:b@host:4222\nping_interval: 2s\nhashy: ab#cd\n\
                   escaped: a\\x41b\nutf: \"caf\\xc3\\xa9\"\nmulti: \"a\nb\"\nsq2: 'x\ny'\nbraces: a{b\n\
                   path: /var/lib/x\nquote_ends: ab'\nempty: \"\"\n";
        let m = parse(src);
        let expected = [
            ("dq", "a\tb\nc\rd\"e\\fA"),
            ("sq", "raw \\t $X \""),
            ("bare", "hello"),
            ("host", "0.0.0.0"),
            ("listen", "127.0.0.1:4222"),
            ("url", "nats://a:b@host:4222"),
            ("ping_interval", "2s"),
            ("hashy", "ab#cd"),
            ("escaped", "aAb"),
            ("utf", "café"),
            ("multi", "a\nb"),
            ("sq2", "x\ny"),
            ("braces", "a{b"),
            ("path", "/var/lib/x"),
            ("quote_ends", "ab"),
            ("empty", ""),
        ];
        for (key, text) in expected {
            assert_eq!(value(&m, key), &s(text), "{key}");
        }
        assert_eq!(lc(&entry(&m, "dq").item.pos), (1, 5));
        assert_eq!(lc(&entry(&m, "sq").item.pos), (2, 5));
        assert_eq!(lc(&entry(&m, "path").item.pos), (16, 7));
        // Columns count characters.
        let m = parse("\"ü\": 1, b: 2");
        assert_eq!(lc(&entry(&m, "b").key_pos), (1, 9));
        // Quoted and escaped values are never booleans or variables.
        assert_eq!(single("\"true\""), s("true"));
        assert_eq!(single("'$X'"), s("$X"));
        assert_eq!(single("\\x24X"), s("$X"));
        assert_eq!(single("tru\\x65"), s("true"));
        // Nor is one ended by a `'`, which nats-server drops.
        assert_eq!(single("true'"), s("true"));
        assert_eq!(single("$X' "), s("$X"));
    }

    #[test]
    fn blocks() {
        let m = parse("text: (\nline one\n  line two (x)\n  )\n)\nafter: 1\nempty: (\n)");
        let text = entry(&m, "text");
        assert_eq!(text.item.value, s("\nline one\n  line two (x)\n  )\n"));
        assert_eq!(lc(&text.item.pos), (1, 7));
        assert_eq!(value(&m, "after"), &Value::Int(1));
        assert_eq!(value(&m, "empty"), &s("\n"));
    }

    #[test]
    fn quoted_keys() {
        let m = parse("\"a b\": 1\n'c:d' = 2\n\"e\"3\n\"include\": 4\n'x\"y' 5");
        assert_eq!(keys(&m), ["a b", "c:d", "e", "include", "x\"y"]);
        assert_eq!(lc(&entry(&m, "c:d").key_pos), (2, 1));
        assert_eq!(lc(&entry(&m, "e").item.pos), (3, 4));
        assert_eq!(value(&m, "include"), &Value::Int(4));
    }

    #[test]
    fn booleans() {
        for t in ["true", "TRUE", "True", "yes", "YES", "on", "On"] {
            assert_eq!(single(t), Value::Bool(true), "{t}");
        }
        for f in ["false", "FALSE", "no", "No", "off", "OFF"] {
            assert_eq!(single(f), Value::Bool(false), "{f}");
        }
        assert_eq!(single("oN1"), s("oN1"));
        assert_eq!(single("yess"), s("yess"));
    }

    #[test]
    fn integers_and_floats() {
        let expected: [(&str, i64); 30] = [
            ("0", 0),
            ("4222", 4222),
            ("-5", -5),
            ("1k", 1000),
            ("1K", 1000),
            ("1kb", 1024),
            ("1KB", 1024),
            ("1ki", 1024),
            ("1KiB", 1024),
            ("2M", 2_000_000),
            ("2MB", 2 << 20),
            ("1mi", 1 << 20),
            ("1MIB", 1 << 20),
            ("3g", 3_000_000_000),
            ("1GB", 1 << 30),
            ("1gib", 1 << 30),
            ("1t", 1_000_000_000_000),
            ("1tb", 1 << 40),
            ("1Ti", 1 << 40),
            ("1p", 1_000_000_000_000_000),
            ("1pb", 1 << 50),
            ("1e", 1_000_000_000_000_000_000),
            ("1eb", 1 << 60),
            ("7EiB", 7 << 60),
            ("-1k", -1000),
            ("-2mb", -(2 << 20)),
            ("10k", 10_000),
            ("128MB", 128 << 20),
            ("9223372036854775807", i64::MAX),
            ("-9223372036854775808", i64::MIN),
        ];
        for (text, n) in expected {
            assert_eq!(single(text), Value::Int(n), "{text}");
        }
        assert_eq!(single("1.5"), Value::Float(1.5));
        assert_eq!(single("-0.25"), Value::Float(-0.25));
        assert_eq!(single("10.0"), Value::Float(10.0));
        for text in [
            "2s",
            "10ms",
            "1x",
            "1kx",
            "1.2.3",
            "127.0.0.1:4222",
            "1i",
            "1b",
            "0x10",
        ] {
            assert_eq!(single(text), s(text), "{text}");
        }
        assert_eq!(lc(&entry(&parse("a: -1k"), "a").item.pos), (1, 4));
    }

    #[test]
    fn dates() {
        assert_eq!(
            single("2021-01-01T00:00:00Z"),
            Value::Date("2021-01-01T00:00:00Z".into())
        );
        assert_eq!(
            single("2024-02-29T23:59:59Z"),
            Value::Date("2024-02-29T23:59:59Z".into())
        );
        for bad in [
            "2021-13-01T00:00:00Z",
            "2021-02-29T00:00:00Z",
            "2021-01-01T24:00:00Z",
            "2021-04-31T00:00:00Z",
        ] {
            assert_error(
                &format!("v: {bad}"),
                1,
                4,
                "expected Zulu formatted DateTime",
            );
        }
        assert_error(
            "v: 2021-01-01\n",
            1,
            14,
            "expected 'T' in ISO8601 date, found a new line",
        );
        assert_error(
            "v: 2021-1-01T00:00:00Z",
            1,
            10,
            "expected a digit in ISO8601 date",
        );
        assert_error("v: 12-3", 1, 6, "full ISO8601");
    }

    #[test]
    fn variables_from_maps() {
        let src = "port: 4222\nlisten_port: $port\ncluster {\n  port: $port\n  inner: 1\n  \
                   deep { x: $inner, y: [$port, $inner] }\n}\nunused: 3\n";
        let m = parse(src);
        let lp = entry(&m, "listen_port");
        assert_eq!(lp.item.value, Value::Int(4222));
        assert_eq!(lc(&lp.item.pos), (2, 14));
        assert!(entry(&m, "port").used_as_variable);
        assert!(!entry(&m, "unused").used_as_variable);
        assert!(!lp.used_as_variable);
        let cluster = map_of(&m, "cluster");
        assert_eq!(value(cluster, "port"), &Value::Int(4222));
        assert!(entry(cluster, "inner").used_as_variable);
        let deep = map_of(cluster, "deep");
        assert_eq!(value(deep, "x"), &Value::Int(1));
        let y: Vec<_> = array_of(deep, "y")
            .iter()
            .map(|i| i.value.clone())
            .collect();
        assert_eq!(y, [Value::Int(4222), Value::Int(1)]);
        assert_eq!(lc(&array_of(deep, "y")[1].pos), (6, 32));
    }

    #[test]
    fn variables_scoping_and_copies() {
        // The innermost definition wins; maps are copied.
        let m = parse("a: 1\nm { a: 2, b: $a }\nc: $a\nn { x: 1 }\no: $n\n");
        assert_eq!(value(map_of(&m, "m"), "b"), &Value::Int(2));
        assert_eq!(value(&m, "c"), &Value::Int(1));
        assert_eq!(value(map_of(&m, "o"), "x"), &Value::Int(1));
        assert_eq!(lc(&entry(map_of(&m, "o"), "x").key_pos), (4, 5));
        // A sibling map is not a scope; a later key is not visible yet.
        assert_error(
            "m { z_natsconf: 1 }\nb: $z_natsconf",
            2,
            4,
            "variable reference for 'z_natsconf' on line 2 can not be found",
        );
        assert_error("b: $z_natsconf\nz_natsconf: 1", 1, 4, "can not be found");
        assert_error(
            "a: 1\nb: $",
            2,
            4,
            "variable reference for '' on line 2 can not be found",
        );
        // bcrypt hashes are strings.
        assert_eq!(
            single("$2a$11$xvD.RP4435evhGoMBo0TgO"),
            s("$2a$11$xvD.RP4435evhGoMBo0TgO")
        );
        // The later duplicate of a variable is not marked.
        let m = parse("v: 1\nw: $v\nv: 2");
        assert!(!entry(&m, "v").used_as_variable);
        assert_eq!(value(&m, "w"), &Value::Int(1));
    }

    #[test]
    fn variables_from_environment() {
        std::env::set_var("NATSCONF_T_PORT", "4333");
        std::env::set_var("NATSCONF_T_MAP", "{ name: envc, ports: [1, 2 ] }");
        std::env::set_var("NATSCONF_T_STR", "\"quoted value\"");
        std::env::set_var("NATSCONF_T_BARE", " hello ");
        std::env::set_var("NATSCONF_T_CHAIN", "$NATSCONF_T_PORT");
        std::env::set_var("NATSCONF_T_BAD", "a b");
        std::env::set_var("NATSCONF_T_SELF", "[$NATSCONF_T_SELF]");
        std::env::set_var("NATSCONF_T_SHADOW", "1");
        let src =
            "p: $NATSCONF_T_PORT\nm: $NATSCONF_T_MAP\nst: $NATSCONF_T_STR\nb: $NATSCONF_T_BARE\n\
                   c: $NATSCONF_T_CHAIN\nNATSCONF_T_SHADOW: 2\nsh: $NATSCONF_T_SHADOW\n";
        let m = parse(src);
        assert_eq!(value(&m, "p"), &Value::Int(4333));
        let map = entry(&m, "m");
        let Value::Map(env_map) = &map.item.value else {
            panic!("not a map")
        };
        assert_eq!(value(env_map, "name"), &s("envc"));
        // Everything read from the environment starts at the reference.
        assert_eq!(lc(&map.item.pos), (2, 4));
        assert_eq!(lc(&entry(env_map, "ports").key_pos), (2, 4));
        assert_eq!(lc(&array_of(env_map, "ports")[1].pos), (2, 4));
        assert_eq!(value(&m, "st"), &s("quoted value"));
        assert_eq!(value(&m, "b"), &s("hello"));
        assert_eq!(value(&m, "c"), &Value::Int(4333));
        assert_eq!(value(&m, "sh"), &Value::Int(2));
        assert_error(
            "x: 1\ny: $NATSCONF_T_BAD",
            2,
            4,
            "variable reference for 'NATSCONF_T_BAD' on line 2 could not be parsed",
        );
        assert_error(
            "y: $NATSCONF_T_SELF",
            1,
            4,
            "variable reference for 'NATSCONF_T_SELF' on line 1 refers to itself",
        );
        assert_error(
            "y: $NATSCONF_T_UNDEFINED_XYZ",
            1,
            4,
            "variable reference for 'NATSCONF_T_UNDEFINED_XYZ' on line 1 can not be found",
        );
    }

    #[test]
    fn includes() {
        let dir = TempDir::new("includes");
        let main = dir.write(
            "main.conf",
            "port: 1\ninclude ./sub/a.conf\ninclude \"b.conf\"\ninclude 'c.conf' # comment\n\
             m { include sub/m.conf; z: 1 }\nafter: $from_b\nINCLUDE\tb2.conf\n",
        );
        dir.write("sub/a.conf", "port: 2\nfrom_a: x\ninclude inner.conf\n");
        dir.write("sub/inner.conf", "inner: yes\n");
        dir.write("b.conf", "from_b: 42\n");
        dir.write("b2.conf", "{ from_b2: 43 }\n");
        dir.write("c.conf", "from_c: 'c'\n");
        dir.write("sub/m.conf", "k: v\n");
        let m = parse_file(&main).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            keys(&m),
            ["port", "from_a", "inner", "from_b", "from_c", "m", "after", "from_b2"]
        );
        let port = entry(&m, "port");
        assert_eq!(port.item.value, Value::Int(2));
        assert!(port.key_pos.file.ends_with("sub/a.conf"));
        assert_eq!(*port.key_pos.file, dir.0.join("./sub/a.conf"));
        let inner = entry(&m, "inner");
        assert_eq!(inner.item.value, Value::Bool(true));
        assert!(inner.key_pos.file.ends_with("sub/inner.conf"));
        assert_eq!(value(&m, "after"), &Value::Int(42));
        assert!(entry(&m, "from_b").used_as_variable);
        assert_eq!(value(&m, "from_c"), &s("c"));
        assert_eq!(keys(map_of(&m, "m")), ["k", "z"]);
        assert_eq!(value(&m, "from_b2"), &Value::Int(43));
        assert_eq!(*entry(&m, "after").key_pos.file, main);
    }

    #[test]
    fn include_does_not_see_the_includer() {
        let dir = TempDir::new("scope");
        let main = dir.write("main.conf", "natsconf_only_here: 1\ninclude uses.conf\n");
        dir.write("uses.conf", "\ny: $natsconf_only_here\n");
        match parse_file(&main) {
            Err(ConfError::Syntax { pos, message }) => {
                assert!(pos.file.ends_with("uses.conf"));
                assert_eq!(lc(&pos), (2, 4));
                assert!(message.contains("can not be found"), "{message}");
            }
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn include_cycles_and_depth() {
        let dir = TempDir::new("cycle");
        let a = dir.write("a.conf", "x: 1\ninclude b.conf\n");
        dir.write("b.conf", "y: 2\n  include ./a.conf\n");
        match parse_file(&a) {
            Err(ConfError::Syntax { pos, message }) => {
                assert!(pos.file.ends_with("b.conf"), "{pos}");
                assert_eq!(lc(&pos), (2, 3));
                assert!(message.contains("include cycle"), "{message}");
            }
            other => panic!("expected a cycle error, got {other:?}"),
        }
        let me = dir.write("self.conf", "include self.conf");
        assert!(
            matches!(parse_file(&me), Err(ConfError::Syntax { message, .. }) if message.contains("include cycle"))
        );
        for i in 0..40 {
            dir.write(
                &format!("chain{i}.conf"),
                &format!("include chain{}.conf\n", i + 1),
            );
        }
        match parse_file(&dir.0.join("chain0.conf")) {
            Err(ConfError::Syntax { message, .. }) => {
                assert!(message.contains("nested more than"), "{message}")
            }
            other => panic!("expected a depth error, got {other:?}"),
        }
    }

    #[test]
    fn missing_files() {
        let dir = TempDir::new("missing");
        let main = dir.write("main.conf", "a: 1\nm {\n  include missing.conf\n}\n");
        let err = parse_file(&main).expect_err("missing include");
        match &err {
            ConfError::Io {
                path,
                source,
                included_at: Some(at),
            } => {
                assert_eq!(*path, dir.0.join("missing.conf"));
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
                assert_eq!(lc(at), (3, 3));
                assert_eq!(*at.file, main);
            }
            other => panic!("expected an include I/O error, got {other:?}"),
        }
        let shown = err.to_string();
        assert!(
            shown.starts_with(&format!(
                "{}:3:3: error opening include file ",
                main.display()
            )),
            "{shown}"
        );
        assert!(std::error::Error::source(&err).is_some());
        let nowhere = dir.0.join("nowhere.conf");
        match parse_file(&nowhere) {
            Err(ConfError::Io {
                path,
                included_at: None,
                ..
            }) => assert_eq!(path, nowhere),
            other => panic!("expected an I/O error, got {other:?}"),
        }
    }

    #[test]
    fn duplicate_keys_later_wins() {
        let m = parse("a: 1\nb: 2\na: 3\n");
        assert_eq!(keys(&m), ["b", "a"]);
        let a = entry(&m, "a");
        assert_eq!(a.item.value, Value::Int(3));
        assert_eq!((lc(&a.key_pos), lc(&a.item.pos)), ((3, 1), (3, 4)));
    }

    #[test]
    fn syntax_errors() {
        let cases: &[(&str, u32, u32, &str)] = &[
            ("a: \"abc", 1, 4, "unterminated string"),
            ("a: 'abc\n", 1, 4, "unterminated string"),
            ("a: \"", 1, 4, "unterminated string"),
            ("x: 1\n\"abc: 1", 2, 1, "unterminated string"),
            ("m {\n a: 1\n", 1, 3, "unterminated map"),
            ("m { a", 1, 3, "unterminated map"),
            ("m { a: 1 # c", 1, 3, "unterminated map"),
            ("a: [1, 2\n", 1, 4, "unterminated array"),
            ("a: [\"x\"", 1, 4, "unterminated array"),
            ("b: (\nabc\n  )", 1, 4, "unterminated block"),
            ("b: (abc)", 1, 4, "unterminated block"),
            ("a: \"x\\qy\"", 1, 6, "invalid escape character 'q'"),
            ("a: x\\qy", 1, 5, "invalid escape character 'q'"),
            ("a: \"x\\", 1, 6, "invalid escape character"),
            ("a: \"\\x4g\"", 1, 5, "two hexadecimal digits"),
            (
                "a: 99999999999999999999",
                1,
                4,
                "integer '99999999999999999999' is out of range",
            ),
            ("a: -99999999999999999999", 1, 4, "out of range"),
            ("a: 9999999999999999k", 1, 4, "out of range"),
            ("a: 8eb", 1, 4, "out of range"),
            ("a: 1kbb", 1, 4, "unknown size suffix"),
            ("a:\n 1", 1, 3, "expected a value, found a new line"),
            ("a: 1 x", 1, 6, "after a top-level value, found 'x'"),
            ("a: 1.5s", 1, 7, "after a top-level value"),
            ("a: 1e5", 1, 6, "after a top-level value"),
            ("a: -5s", 1, 6, "after a top-level value"),
            ("a: 127.0.0.1:4222/x", 1, 19, "after a top-level value"),
            ("m { a: 1 x }", 1, 10, "after a map value"),
            ("a: [1 x]", 1, 7, "after an array value"),
            ("a: [\"x\";]", 1, 8, "after an array value"),
            ("a: [,1]", 1, 5, "unexpected ','"),
            ("= 1", 1, 1, "unexpected key separator '='"),
            ("m { : 1 }", 1, 5, "unexpected key separator ':'"),
            ("m { ] }", 1, 5, "unexpected ']'"),
            ("a: .5", 1, 4, "floats must start with a digit"),
            ("a: 1.x", 1, 6, "floats must have a digit after the '.'"),
            ("a: -x", 1, 5, "expected a digit after '-'"),
            ("port", 1, 1, "key 'port' has no value"),
            ("a: 1\nport \n", 2, 1, "key 'port' has no value"),
            ("include", 1, 1, "key 'include' has no value"),
            (
                "include \n",
                1,
                9,
                "expected a file name after include, found a new line",
            ),
            (
                "include 5.conf",
                1,
                9,
                "expected a file name after include, found '5'",
            ),
            ("include \"x", 1, 9, "unterminated string"),
        ];
        for &(src, line, col, needle) in cases {
            assert_error(src, line, col, needle);
        }
    }

    #[test]
    fn nesting_is_limited() {
        let deep = format!("a: {}", "[".repeat(MAX_NESTING + 10));
        assert_error(&deep, 1, 4 + MAX_NESTING as u32, "nested more than");
        let ok = format!("a: {}{}", "[".repeat(MAX_NESTING), "]".repeat(MAX_NESTING));
        parse(&ok);
        let maps = format!("a: {}", "{b: ".repeat(MAX_NESTING + 1));
        assert!(syntax_error(&maps).2.contains("nested more than"));
    }

    #[test]
    fn error_display() {
        let err = parse_str("a: 1\nb: \"x", Path::new("/etc/nats/x.conf")).expect_err("error");
        assert_eq!(err.to_string(), "/etc/nats/x.conf:2:4: unterminated string");
        assert!(std::error::Error::source(&err).is_none());
        let pos = Pos {
            file: Arc::new(PathBuf::from("f.conf")),
            line: 3,
            col: 7,
        };
        assert_eq!(pos.to_string(), "f.conf:3:7");
    }

    #[test]
    fn type_names() {
        let names: Vec<_> = [
            s("x"),
            Value::Int(1),
            Value::Float(1.0),
            Value::Bool(true),
            Value::Date("2021-01-01T00:00:00Z".into()),
            Value::Array(Vec::new()),
            Value::Map(Map::default()),
        ]
        .iter()
        .map(Value::type_name)
        .collect();
        assert_eq!(
            names,
            ["string", "integer", "float", "boolean", "date", "array", "map"]
        );
    }

    #[test]
    fn line_endings_and_bom() {
        let m = parse("\u{feff}a: 1\r\nb {\r\n  c: two\r\n}\r\nd: [x,\r\n y]\r\n");
        assert_eq!(lc(&entry(&m, "a").key_pos), (1, 1));
        assert_eq!(value(map_of(&m, "b"), "c"), &s("two"));
        assert_eq!(array_of(&m, "d").len(), 2);
        assert_eq!(parse("").entries.len(), 0);
        assert_eq!(parse("# only a comment").entries.len(), 0);
    }

    /// A xorshift64 generator: enough randomness for a fuzz test without crates.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    const PIECES: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        "(",
        ")",
        "\"",
        "'",
        "\\",
        "\\x4",
        "\\x41",
        "\\t",
        "$",
        "$a",
        "$2a$",
        "#",
        "//",
        "/",
        "=",
        ":",
        ";",
        ",",
        "\n",
        "\r\n",
        " ",
        "\t",
        "a",
        "key",
        "include ",
        "include",
        "true",
        "On",
        "1",
        "12",
        "2021-",
        "2021-01-01T00:00:00Z",
        "-",
        ".",
        "1.5",
        "1.2.3",
        "k",
        "kb",
        "MiB",
        "e",
        "9223372036854775807",
        "é",
        "\u{feff}",
        "\0",
        "0",
        ")\n",
        "\n)",
        "x:",
        "$NATSCONF_FUZZ_ENV",
        "$NATSCONF_FUZZ_MAP",
    ];

    fn random_input(rng: &mut XorShift) -> String {
        match rng.below(3) {
            0 => {
                let bytes: Vec<u8> = (0..rng.below(200)).map(|_| rng.next() as u8).collect();
                String::from_utf8_lossy(&bytes).into_owned()
            }
            1 => (0..rng.below(120))
                .map(|_| PIECES[rng.below(PIECES.len())])
                .collect(),
            _ => {
                let mut chars: Vec<char> = EXAMPLES[rng.below(EXAMPLES.len())].1.chars().collect();
                for _ in 0..=rng.below(6) {
                    let at = rng.below(chars.len() + 1);
                    match rng.below(3) {
                        0 if at < chars.len() => {
                            chars.remove(at);
                        }
                        _ => {
                            let piece = PIECES[rng.below(PIECES.len())];
                            chars.splice(at..at, piece.chars());
                        }
                    }
                }
                chars.into_iter().collect()
            }
        }
    }

    #[test]
    fn random_input_never_panics() {
        std::env::set_var("NATSCONF_FUZZ_ENV", "{ a: [1, $NATSCONF_FUZZ_ENV] }");
        std::env::set_var(
            "NATSCONF_FUZZ_MAP",
            "{ a: [1, 2kb, x], b: { c: 2021-01-01T00:00:00Z } }",
        );
        let path = std::env::temp_dir()
            .join("natsconf-fuzz-no-such-dir")
            .join("fuzz.conf");
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut accepted = 0;
        for _ in 0..20_000 {
            let input = random_input(&mut rng);
            if parse_str(&input, &path).is_ok() {
                accepted += 1;
            }
        }
        assert!(accepted > 100, "only {accepted} inputs parsed");
    }

    /// The example configurations of the project (`shared/examples`), inline.
    const EXAMPLES: &[(&str, &str)] = &[
        ("single.conf", EX_SINGLE),
        ("cluster-a.conf", EX_CLUSTER_A),
        ("accounts.conf", EX_ACCOUNTS),
        ("hub.conf", EX_HUB),
        ("leaf.conf", EX_LEAF),
        ("region1.conf", EX_REGION1),
        ("region1-jetstream.conf", EX_REGION1_JS),
    ];

    const EX_SINGLE: &str = r#"# One server, monitoring on, a few limits raised.
server_name: single-1
listen: 127.0.0.1:4222
http: 127.0.0.1:8222

max_payload: 2MB          # 2 * 1024 * 1024
max_pending: 128MB
max_connections: 10k      # 10 * 1000
ping_interval: "30s"
ping_max: 3
write_deadline: "5s"

logtime: true
debug: false
trace: false
"#;

    const EX_CLUSTER_A: &str = r#"# Server a of a three-server cluster. Each server lists every route; a server that lists
# only one seed must still find the others through gossip.
server_name: cluster-a
port: 4222

cluster {
  name: east
  listen: 127.0.0.1:6222
  routes = [
    nats-route://127.0.0.1:6222
    nats-route://127.0.0.1:6223
    nats-route://127.0.0.1:6224
  ]
}
"#;

    const EX_ACCOUNTS: &str = r#"# Accounts shared by hub.conf and leaf.conf.
accounts: {
  SYS: {
    users: [ { user: sys, password: sys } ]
  }
  EDGE: {
    users: [
      { user: leaf, password: leaf }
      # the password of app is app-secret, stored as a bcrypt hash
      { user: app, password: "$2a$11$xvD.RP4435evhGoMBo0TgOJ1M0dqjz4Rt3wG4k65YXVGBvWtIuY6a",
        permissions: { publish: ["edge.>", "_INBOX.>"], subscribe: ["edge.>", "_INBOX.>"] } }
    ]
    exports: [ { stream: "edge.events.>" }, { service: "edge.api.*" } ]
  }
  APP: {
    users: [ { user: reader, password: reader } ]
    imports: [
      { stream: { account: EDGE, subject: "edge.events.>" }, prefix: "from_edge" }
      { service: { account: EDGE, subject: "edge.api.*" }, to: "api.*" }
    ]
  }
}
system_account: SYS
"#;

    const EX_HUB: &str = r#"# A hub that accepts leafnode connections.
port: 4222
server_name: hub
include ./accounts.conf

leafnodes: {
  port: 7422
}
"#;

    const EX_LEAF: &str = r#"# A leaf server: its clients use local accounts; the EDGE account is bridged to the hub.
port: 4225
server_name: leaf-1
include ./accounts.conf

leafnodes: {
  remotes: [
    {
      urls: ["nats://leaf:leaf@127.0.0.1:7422"]
      account: "EDGE"
    }
  ]
}
"#;

    const EX_REGION1: &str = r#"# One server of region1 in a supercluster of three regions. Every server of a region carries
# the same gateway name; the entry for its own region is ignored.
server_name: region1-s1
port: 4222
http_port: 8222

cluster: {
  name: region1
  listen: 127.0.0.1:6222
  routes: [
    "nats://127.0.0.1:6222"
    "nats://127.0.0.1:6232"
    "nats://127.0.0.1:6242"
  ]
}

gateway: {
  name: region1
  port: 7222
  gateways: [
    { name: "region1", url: "nats://127.0.0.1:7222" }
    { name: "region2", urls: ["nats://127.0.0.1:7322", "nats://127.0.0.1:7332"] }
    { name: "region3", url: "nats://127.0.0.1:7422" }
  ]
}
"#;

    const EX_REGION1_JS: &str = r#"include ./region1.conf

jetstream: {
  store_dir: "/var/lib/tern/jetstream"
  max_memory_store: 1GB
  max_file_store: 10GB
}
"#;

    /// Parses every example from a temp dir (so that includes resolve).
    fn parse_examples() -> Vec<(&'static str, Map)> {
        let dir = TempDir::new("examples");
        for (name, text) in EXAMPLES {
            dir.write(name, text);
        }
        EXAMPLES
            .iter()
            .map(|(name, _)| {
                let map = parse_file(&dir.0.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
                (*name, map)
            })
            .collect()
    }

    fn example<'a>(all: &'a [(&str, Map)], name: &str) -> &'a Map {
        &all.iter().find(|(n, _)| *n == name).expect("example").1
    }

    #[test]
    fn examples_parse() {
        let all = parse_examples();
        let single = example(&all, "single.conf");
        assert_eq!(value(single, "listen"), &s("127.0.0.1:4222"));
        assert_eq!(value(single, "max_payload"), &Value::Int(2 * 1024 * 1024));
        assert_eq!(value(single, "max_pending"), &Value::Int(128 << 20));
        assert_eq!(value(single, "max_connections"), &Value::Int(10_000));
        assert_eq!(value(single, "ping_interval"), &s("30s"));
        assert_eq!(value(single, "logtime"), &Value::Bool(true));
        assert_eq!(lc(&entry(single, "max_connections").item.pos), (8, 18));

        let cluster = map_of(example(&all, "cluster-a.conf"), "cluster");
        let routes: Vec<_> = array_of(cluster, "routes")
            .iter()
            .map(|i| i.value.clone())
            .collect();
        assert_eq!(routes[2], s("nats-route://127.0.0.1:6224"));
        assert_eq!(routes.len(), 3);

        let hub = example(&all, "hub.conf");
        assert_eq!(
            keys(hub),
            [
                "port",
                "server_name",
                "accounts",
                "system_account",
                "leafnodes"
            ]
        );
        let accounts = map_of(hub, "accounts");
        let edge_users = array_of(map_of(accounts, "EDGE"), "users");
        let Value::Map(app) = &edge_users[1].value else {
            panic!("not a map")
        };
        assert!(matches!(value(app, "password"), Value::Str(p) if p.starts_with("$2a$11$")));
        let app_imports = array_of(map_of(accounts, "APP"), "imports");
        let Value::Map(import) = &app_imports[0].value else {
            panic!("not a map")
        };
        assert_eq!(value(map_of(import, "stream"), "account"), &s("EDGE"));
        assert_eq!(value(map_of(hub, "leafnodes"), "port"), &Value::Int(7422));

        let leaf = example(&all, "leaf.conf");
        let remotes = array_of(map_of(leaf, "leafnodes"), "remotes");
        let Value::Map(remote) = &remotes[0].value else {
            panic!("not a map")
        };
        assert_eq!(
            array_of(remote, "urls")[0].value,
            s("nats://leaf:leaf@127.0.0.1:7422")
        );

        let js = example(&all, "region1-jetstream.conf");
        assert_eq!(value(js, "server_name"), &s("region1-s1"));
        let gateways = array_of(map_of(js, "gateway"), "gateways");
        let Value::Map(region2) = &gateways[1].value else {
            panic!("not a map")
        };
        assert_eq!(array_of(region2, "urls").len(), 2);
        let jetstream = map_of(js, "jetstream");
        assert_eq!(value(jetstream, "max_memory_store"), &Value::Int(1 << 30));
        assert_eq!(value(jetstream, "max_file_store"), &Value::Int(10 << 30));
    }

    #[test]
    fn example_missing_its_include() {
        let dir = TempDir::new("lonely");
        let hub = dir.write("hub.conf", EX_HUB);
        match parse_file(&hub) {
            Err(ConfError::Io {
                path,
                included_at: Some(at),
                ..
            }) => {
                assert!(path.ends_with("accounts.conf"));
                assert_eq!(lc(&at), (4, 1));
            }
            other => panic!("expected a missing include, got {other:?}"),
        }
    }

    /// The examples directory of a full checkout, when there is one.
    #[test]
    fn shared_examples_directory_parses() {
        let Ok(dir) = std::fs::read_dir("/work/shared/examples") else {
            return;
        };
        for file in dir.flatten() {
            let path = file.path();
            if path.extension().is_some_and(|e| e == "conf") {
                parse_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
        }
    }
}
