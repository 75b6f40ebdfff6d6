//! Streaming, typed record reader for the CLI.
//!
//! A [`RecordReader<T>`] reads records of type `T` one at a time from CSV or
//! JSON lines input (a file, stdin, or the bundled demo data) with bounded
//! memory. Each item is either a record or a [`BadRecord`] naming the source,
//! the 1-based line and the reason; after a `BadRecord` iteration can go on
//! with the next record, so the caller decides whether to abort or to skip.
//!
//! Record size limit: a record is measured as the bytes of its line(s) in the
//! input, without the final line terminator (`\n` or `\r\n`). A record over
//! `max_record_bytes` is reported as a [`BadRecord`] and skipped *without*
//! being held in memory: at most `max_record_bytes + 2` bytes of it are
//! kept, the rest is read and discarded. There is no "unlimited" value; pass
//! `usize::MAX` for no practical limit.
//!
//! CSV details: the first non-blank line is the header; fields are split and
//! unescaped by the `csv` crate (RFC 4180 quoting, `""` escapes) and trimmed
//! of ASCII whitespace like `csv::Trim::All`; blank (whitespace-only) lines
//! outside quoted fields are skipped, as for JSON lines. Line terminators are
//! `\n` or `\r\n` (a bare `\r` is not a terminator).

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::iter::FusedIterator;
use std::marker::PhantomData;
use std::path::Path;

use serde::de::DeserializeOwned;

/// The bundled demo input, compiled into the binary so the demo runs from any
/// directory.
pub const DEMO_CSV: &str = include_str!("../../../data/scientists.csv");

/// The source name of the bundled demo input, as it appears in messages.
pub const DEMO_SOURCE: &str = "<built-in scientists.csv>";

/// The source name of standard input, as it appears in messages.
pub const STDIN_SOURCE: &str = "<stdin>";

/// Capacity of the buffer between the file (or stdin) and the parser.
const BUF_CAPACITY: usize = 64 * 1024;

/// How much leading whitespace format sniffing looks through before it gives
/// up and assumes CSV.
const SNIFF_LIMIT: usize = 1024 * 1024;

/// The UTF-8 byte order mark, skipped at the start of the input.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The format of an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Comma-separated values, with a header line naming the fields.
    Csv,
    /// One JSON value per line; blank lines are skipped.
    JsonLines,
}

impl Format {
    /// The format implied by a file name's extension (case-insensitive):
    /// `.csv` is CSV, `.jsonl`, `.ndjson` and `.json` are JSON lines; `None`
    /// for any other extension or none.
    pub fn from_extension(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "csv" => Some(Format::Csv),
            "jsonl" | "ndjson" | "json" => Some(Format::JsonLines),
            _ => None,
        }
    }
}

/// A record that could not be read: where it is and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRecord {
    /// Where records come from, for messages: a path, `"<stdin>"`, or
    /// `"<built-in scientists.csv>"`.
    pub source: String,
    /// The 1-based line of the record in the input (for a CSV record spanning
    /// several lines, its first line; the CSV header is line 1).
    pub line: u64,
    /// What is wrong with it.
    pub reason: String,
}

// Display and Error are written by hand: thiserror would take the field named
// `source` for the error's cause.
impl fmt::Display for BadRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.source, self.line, self.reason)
    }
}

impl std::error::Error for BadRecord {}

/// An input that cannot be opened at all.
///
/// The I/O error is part of the message (not the error's `source()`), so
/// printing the chain shows it once.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The file cannot be opened (missing, no permission, a directory, ...).
    #[error("cannot open {path}: {err}")]
    Open {
        /// The path as given.
        path: String,
        /// Why.
        err: io::Error,
    },
    /// The file opened but reading its start (to detect its format) failed.
    #[error("cannot read {path}: {err}")]
    Read {
        /// The path as given.
        path: String,
        /// Why.
        err: io::Error,
    },
}

/// A streaming reader of records of type `T`: an iterator over
/// `Result<T, BadRecord>`; see the module documentation.
pub struct RecordReader<T> {
    input: Input,
    parser: Parser,
    _record: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for RecordReader<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordReader")
            .field("source", &self.input.source)
            .field("format", &self.format())
            .field("line", &self.input.line)
            .field("done", &self.input.done)
            .finish_non_exhaustive()
    }
}

impl<T: DeserializeOwned> RecordReader<T> {
    /// Open `path`; `"-"` means JSON lines on stdin. The format comes from the
    /// extension (see [`Format::from_extension`]), otherwise it is sniffed
    /// from the first non-whitespace byte: `{` means JSON lines, anything
    /// else CSV.
    pub fn open(path: &str, max_record_bytes: usize) -> Result<Self, OpenError> {
        if path == "-" {
            let stdin = BufReader::with_capacity(BUF_CAPACITY, io::stdin());
            return Ok(Self::from_reader(
                Box::new(stdin),
                Format::JsonLines,
                STDIN_SOURCE.to_string(),
                max_record_bytes,
            ));
        }
        let open_error = |err| OpenError::Open {
            path: path.to_string(),
            err,
        };
        let file = File::open(path).map_err(open_error)?;
        if file.metadata().map_err(open_error)?.is_dir() {
            return Err(open_error(io::Error::new(
                io::ErrorKind::IsADirectory,
                "it is a directory",
            )));
        }
        let reader: Box<dyn BufRead + Send> =
            Box::new(BufReader::with_capacity(BUF_CAPACITY, file));
        let (format, reader) = match Format::from_extension(Path::new(path)) {
            Some(format) => (format, reader),
            None => sniff(reader).map_err(|err| OpenError::Read {
                path: path.to_string(),
                err,
            })?,
        };
        Ok(Self::from_reader(
            reader,
            format,
            path.to_string(),
            max_record_bytes,
        ))
    }

    /// The bundled demo data ([`DEMO_CSV`]), source name
    /// `"<built-in scientists.csv>"`.
    pub fn demo(max_record_bytes: usize) -> Self {
        Self::from_reader(
            Box::new(DEMO_CSV.as_bytes()),
            Format::Csv,
            DEMO_SOURCE.to_string(),
            max_record_bytes,
        )
    }

    /// From any reader with a known format (used by tests and by
    /// [`open`](Self::open) and [`demo`](Self::demo)). `source` names the
    /// input in [`BadRecord`]s.
    pub fn from_reader(
        reader: Box<dyn BufRead + Send>,
        format: Format,
        source: String,
        max_record_bytes: usize,
    ) -> Self {
        let parser = match format {
            Format::Csv => Parser::Csv(Box::new(CsvParser::new())),
            Format::JsonLines => Parser::Json(Vec::new()),
        };
        RecordReader {
            input: Input {
                reader,
                source,
                limit: max_record_bytes,
                line: 0,
                started: false,
                done: false,
            },
            parser,
            _record: PhantomData,
        }
    }
}

impl<T> RecordReader<T> {
    /// The input's name, as used in [`BadRecord`]s.
    pub fn source(&self) -> &str {
        &self.input.source
    }

    /// The input's format.
    pub fn format(&self) -> Format {
        match self.parser {
            Parser::Csv(_) => Format::Csv,
            Parser::Json(_) => Format::JsonLines,
        }
    }
}

impl<T: DeserializeOwned> Iterator for RecordReader<T> {
    type Item = Result<T, BadRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.input.done {
            return None;
        }
        if !self.input.started {
            self.input.started = true;
            if let Err(err) = self.input.skip_bom() {
                return Some(Err(self.input.read_error(err)));
            }
        }
        match &mut self.parser {
            Parser::Json(buf) => next_json(&mut self.input, buf),
            Parser::Csv(csv) => csv.next(&mut self.input),
        }
    }
}

impl<T: DeserializeOwned> FusedIterator for RecordReader<T> {}

/// The raw input and the position in it, shared by both parsers.
struct Input {
    reader: Box<dyn BufRead + Send>,
    source: String,
    /// `max_record_bytes`.
    limit: usize,
    /// Physical lines consumed so far.
    line: u64,
    /// Whether the start of the input (a BOM) has been dealt with.
    started: bool,
    /// After the end of the input, a read error or a fatal CSV header error.
    done: bool,
}

impl Input {
    fn bad(&self, line: u64, reason: String) -> BadRecord {
        BadRecord {
            source: self.source.clone(),
            line,
            reason,
        }
    }

    /// A read error ends the input: retrying a persistent error would loop
    /// forever.
    fn read_error(&mut self, err: io::Error) -> BadRecord {
        self.done = true;
        self.bad(self.line + 1, format!("read error: {err}"))
    }

    fn over_limit(&self, line: u64, size: u64) -> BadRecord {
        self.bad(
            line,
            format!(
                "record is {size} bytes, over the limit of {} bytes",
                self.limit
            ),
        )
    }

    fn limit_u64(&self) -> u64 {
        u64::try_from(self.limit).unwrap_or(u64::MAX)
    }

    fn skip_bom(&mut self) -> io::Result<()> {
        let has_bom = fill_buf(&mut *self.reader)?.starts_with(BOM);
        if has_bom {
            self.reader.consume(BOM.len());
        }
        Ok(())
    }
}

enum Parser {
    /// The line buffer, reused from line to line.
    Json(Vec<u8>),
    Csv(Box<CsvParser>),
}

/// `fill_buf`, retrying on `Interrupted`.
fn fill_buf(reader: &mut dyn BufRead) -> io::Result<&[u8]> {
    loop {
        // Retry first, then borrow: the borrow checker cannot return a
        // borrow from inside the loop.
        match reader.fill_buf() {
            Ok(_) => break,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        }
    }
    reader.fill_buf()
}

/// One physical line as read by [`read_line`].
#[derive(Debug, Clone, Copy)]
struct Line {
    /// Its length in bytes, without the `\n`.
    len: u64,
    /// Whether it ended with `\n` (otherwise at the end of the input).
    newline: bool,
    /// Its last byte before the `\n`, if any.
    last: Option<u8>,
}

/// Read one physical line, appending it (with its `\n`) to `buf` as long as
/// `buf` stays within `cap` bytes plus the `\n`; beyond that the rest of the
/// line is read and discarded, so `buf` never grows past `cap + 1` bytes and
/// a huge line is never held in memory. `scan` sees every byte of the line
/// except the `\n`, kept or discarded. A line of length 0 without newline
/// means the end of the input.
fn read_line(
    reader: &mut dyn BufRead,
    buf: &mut Vec<u8>,
    cap: usize,
    mut scan: impl FnMut(&[u8]),
) -> io::Result<Line> {
    let start = buf.len();
    let room = cap.saturating_sub(start);
    // One byte more than the room, to see whether the line is over it.
    let want = u64::try_from(room).unwrap_or(u64::MAX).saturating_add(1);
    let n = Read::take(&mut *reader, want).read_until(b'\n', buf)?;
    let got = &buf[start..];
    if let Some((&b'\n', content)) = got.split_last() {
        scan(content);
        return Ok(Line {
            len: content.len() as u64,
            newline: true,
            last: content.last().copied(),
        });
    }
    scan(got);
    let mut line = Line {
        len: n as u64,
        newline: false,
        last: got.last().copied(),
    };
    if (n as u64) < want {
        return Ok(line); // the end of the input
    }
    // Over the room: keep what fits and discard the rest of the line.
    buf.truncate(start + room);
    loop {
        let avail = fill_buf(reader)?;
        if avail.is_empty() {
            return Ok(line);
        }
        let (segment, newline) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (&avail[..i], true),
            None => (avail, false),
        };
        scan(segment);
        line.len += segment.len() as u64;
        if let Some(&b) = segment.last() {
            line.last = Some(b);
        }
        let used = segment.len() + usize::from(newline);
        reader.consume(used);
        if newline {
            line.newline = true;
            return Ok(line);
        }
    }
}

/// Strip a trailing `\n`, then a trailing `\r`.
fn strip_terminator(mut bytes: &[u8]) -> &[u8] {
    if let Some((&b'\n', rest)) = bytes.split_last() {
        bytes = rest;
    }
    if let Some((&b'\r', rest)) = bytes.split_last() {
        bytes = rest;
    }
    bytes
}

fn is_blank(bytes: &[u8]) -> bool {
    bytes.iter().all(u8::is_ascii_whitespace)
}

fn invalid_utf8(err: &std::str::Utf8Error) -> String {
    format!(
        "invalid UTF-8 (at byte {} of the record)",
        err.valid_up_to()
    )
}

// ---------------------------------------------------------------- JSON lines

fn next_json<T: DeserializeOwned>(
    input: &mut Input,
    buf: &mut Vec<u8>,
) -> Option<Result<T, BadRecord>> {
    // Room for the record and a `\r`.
    let cap = input.limit.saturating_add(1);
    loop {
        buf.clear();
        let line = match read_line(&mut *input.reader, buf, cap, |_| {}) {
            Ok(line) => line,
            Err(err) => return Some(Err(input.read_error(err))),
        };
        if line.len == 0 && !line.newline {
            input.done = true;
            return None;
        }
        input.line += 1;
        let size = line.len - u64::from(line.last == Some(b'\r'));
        if size > input.limit_u64() {
            return Some(Err(input.over_limit(input.line, size)));
        }
        let content = strip_terminator(buf);
        if is_blank(content) {
            continue;
        }
        let text = match std::str::from_utf8(content) {
            Ok(text) => text,
            Err(err) => return Some(Err(input.bad(input.line, invalid_utf8(&err)))),
        };
        return Some(
            serde_json::from_str(text).map_err(|err| input.bad(input.line, json_reason(&err))),
        );
    }
}

/// serde_json's message, with its position made relative to the record: the
/// line is always 1, so only the column is kept.
fn json_reason(err: &serde_json::Error) -> String {
    let message = err.to_string();
    let message = match message.rfind(" at line ") {
        Some(at) if err.line() != 0 => format!("{} at column {}", &message[..at], err.column()),
        _ => message,
    };
    match err.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
            format!("invalid JSON: {message}")
        }
        serde_json::error::Category::Data | serde_json::error::Category::Io => message,
    }
}

// ----------------------------------------------------------------------- CSV

/// Where a CSV scan is within a record, mirroring `csv_core`'s state machine
/// (comma delimiter, `"` quotes with `""` escapes, no escape character, no
/// comments): only enough of it to tell whether a `\n` ends the record or is
/// inside a quoted field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QuoteState {
    /// At the start of a field: a `"` opens a quoted field.
    FieldStart,
    /// In an unquoted field (or after a closed quote): `"` is literal.
    Unquoted,
    /// In a quoted field: `\n` and `,` are data.
    Quoted,
    /// After a `"` in a quoted field: `"` is an escaped quote, anything else
    /// closes the quoted field.
    QuoteInQuoted,
}

impl QuoteState {
    fn scan(self, bytes: &[u8]) -> QuoteState {
        use QuoteState::*;
        if !bytes.contains(&b'"') {
            return match (self, bytes.last()) {
                (_, None) => self,
                (Quoted, _) => Quoted,
                (_, Some(b',')) => FieldStart,
                (_, Some(_)) => Unquoted,
            };
        }
        bytes.iter().fold(self, |state, &b| match (state, b) {
            (Quoted, b'"') => QuoteInQuoted,
            (Quoted, _) => Quoted,
            (FieldStart | QuoteInQuoted, b'"') => Quoted,
            (_, b',') => FieldStart,
            _ => Unquoted,
        })
    }
}

/// Hands one record at a time to the `csv` parser.
#[derive(Debug, Default)]
struct Feeder {
    data: Vec<u8>,
    pos: usize,
    /// Set when the parser asked for more than the record it was given:
    /// then it disagrees with [`QuoteState`] about where the record ends.
    starved: bool,
}

impl Read for Feeder {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let rest = &self.data[self.pos..];
        let n = rest.len().min(out.len());
        out[..n].copy_from_slice(&rest[..n]);
        self.pos += n;
        if n == 0 && !out.is_empty() {
            self.starved = true;
        }
        Ok(n)
    }
}

/// CSV state: records are cut out of the input line by line (so line numbers
/// are exact and the size limit is applied while reading), checked, and then
/// handed one at a time to a `csv::Reader` for splitting and unescaping.
struct CsvParser {
    parser: csv::Reader<Feeder>,
    /// The trimmed header, once read.
    headers: Option<csv::ByteRecord>,
    /// The record as parsed, and trimmed; both reused from record to record.
    raw: csv::ByteRecord,
    record: csv::ByteRecord,
}

fn csv_reader() -> csv::Reader<Feeder> {
    csv::ReaderBuilder::new()
        .has_headers(false) // the header is handled here
        .flexible(true) // field counts are checked against the header here
        .terminator(csv::Terminator::Any(b'\n')) // the `\r` of `\r\n` is stripped here
        .from_reader(Feeder::default())
}

impl CsvParser {
    fn new() -> Self {
        CsvParser {
            parser: csv_reader(),
            headers: None,
            raw: csv::ByteRecord::new(),
            record: csv::ByteRecord::new(),
        }
    }

    fn next<T: DeserializeOwned>(&mut self, input: &mut Input) -> Option<Result<T, BadRecord>> {
        loop {
            let line = input.line + 1;
            let result = self.read_record(input)?;
            let is_header = self.headers.is_none();
            let bad = match result {
                Ok(true) => match &self.headers {
                    Some(headers) => {
                        return Some(
                            deserialize(&self.record, headers)
                                .map_err(|reason| input.bad(line, reason)),
                        )
                    }
                    None if self.record.iter().all(<[u8]>::is_empty) => {
                        input.bad(line, "empty CSV header (no column names)".to_string())
                    }
                    None => {
                        self.headers = Some(self.record.clone());
                        continue;
                    }
                },
                Ok(false) => continue, // a blank line
                Err(bad) => bad,
            };
            if is_header {
                // Nothing after a bad header can be read.
                input.done = true;
            }
            return Some(Err(bad));
        }
    }

    /// Read the next record into `self.record`. `None` at the end of the
    /// input, `Ok(false)` for a blank line, a `BadRecord` for a record that
    /// cannot be split into fields.
    fn read_record(&mut self, input: &mut Input) -> Option<Result<bool, BadRecord>> {
        let start = input.line + 1;
        let feeder = self.parser.get_mut();
        feeder.data.clear();
        feeder.pos = 0;
        feeder.starved = false;
        // Room for the record and a `\r`.
        let cap = input.limit.saturating_add(1);
        let mut quote = QuoteState::FieldStart;
        // Bytes of the record so far, with the `\n`s inside it.
        let mut total: u64 = 0;
        let mut last = None;
        // Whether the record ends with a `\n` (not at the end of the input).
        let newline = loop {
            let line = match read_line(&mut *input.reader, &mut feeder.data, cap, |segment| {
                quote = quote.scan(segment)
            }) {
                Ok(line) => line,
                Err(err) => return Some(Err(input.read_error(err))),
            };
            if line.len == 0 && !line.newline {
                if input.line + 1 == start {
                    input.done = true;
                    return None;
                }
                break false; // after a `\n` inside a quoted field
            }
            input.line += 1;
            total += line.len + u64::from(line.newline);
            // Past the limit, keep no more (`read_line` may still add a `\n`
            // per line of a long quoted field).
            if feeder.data.len() > cap.saturating_add(1) {
                feeder.data.truncate(cap);
            }
            last = line.last.or(last);
            if quote != QuoteState::Quoted || !line.newline {
                break line.newline;
            }
            // A `\n` inside a quoted field: the record goes on.
            last = Some(b'\n');
        };
        if quote == QuoteState::Quoted {
            return Some(Err(input.bad(
                start,
                "malformed CSV: unterminated quoted field (its closing quote is missing)".into(),
            )));
        }
        let size = total - u64::from(newline) - u64::from(last == Some(b'\r'));
        if size > input.limit_u64() {
            return Some(Err(input.over_limit(start, size)));
        }
        let content_len = strip_terminator(&feeder.data).len();
        feeder.data.truncate(content_len);
        if input.line == start && is_blank(&feeder.data) {
            return Some(Ok(false));
        }
        if let Err(err) = std::str::from_utf8(&feeder.data) {
            return Some(Err(input.bad(start, invalid_utf8(&err))));
        }
        feeder.data.push(b'\n');
        let parsed = self.parser.read_byte_record(&mut self.raw);
        let feeder = self.parser.get_ref();
        if parsed.is_err() || feeder.starved || feeder.pos != feeder.data.len() {
            // Cannot happen as long as `QuoteState` agrees with csv_core; if it
            // does not, start over with a fresh parser rather than let the
            // next record be glued to this one.
            self.parser = csv_reader();
            let reason = match parsed {
                Err(err) => format!("malformed CSV: {err}"),
                Ok(_) => "malformed CSV: cannot find the end of the record".to_string(),
            };
            return Some(Err(input.bad(start, reason)));
        }
        // Trim like `csv::Trim::All`, without its allocation per record.
        self.record.clear();
        for field in &self.raw {
            self.record.push_field(field.trim_ascii());
        }
        if let Some(headers) = &self.headers {
            if self.record.len() != headers.len() {
                return Some(Err(input.bad(
                    start,
                    format!(
                        "malformed CSV: wrong number of fields: expected {} (as in the header), found {}",
                        headers.len(),
                        self.record.len()
                    ),
                )));
            }
        }
        Some(Ok(true))
    }
}

/// Deserialize a CSV record by its header, naming the field in errors.
fn deserialize<T: DeserializeOwned>(
    record: &csv::ByteRecord,
    headers: &csv::ByteRecord,
) -> Result<T, String> {
    record.deserialize(Some(headers)).map_err(|err| {
        let csv::ErrorKind::Deserialize { err, .. } = err.kind() else {
            return err.to_string();
        };
        let field = err.field().and_then(|i| usize::try_from(i).ok());
        let name = field.and_then(|i| headers.get(i));
        let value = field.and_then(|i| record.get(i)).filter(|v| !v.is_empty());
        match (name, value, err.kind()) {
            (
                Some(name),
                Some(value),
                csv::DeserializeErrorKind::ParseInt(_)
                | csv::DeserializeErrorKind::ParseFloat(_)
                | csv::DeserializeErrorKind::ParseBool(_),
            ) => format!(
                "field `{}`: {} (value `{}`)",
                String::from_utf8_lossy(name),
                err.kind(),
                String::from_utf8_lossy(value)
            ),
            (Some(name), _, kind) => format!("field `{}`: {kind}", String::from_utf8_lossy(name)),
            (None, _, kind) => kind.to_string(),
        }
    })
}

/// Decide the format of an input with no telling extension from its first
/// non-whitespace byte, without losing any of it.
fn sniff(mut reader: Box<dyn BufRead + Send>) -> io::Result<(Format, Box<dyn BufRead + Send>)> {
    let mut prefix = Vec::new();
    let format = loop {
        let avail = fill_buf(&mut *reader)?;
        if avail.is_empty() {
            break Format::Csv;
        }
        let skip = if prefix.is_empty() && avail.starts_with(BOM) {
            BOM.len()
        } else {
            0
        };
        if let Some(&first) = avail[skip..].iter().find(|b| !b.is_ascii_whitespace()) {
            break if first == b'{' {
                Format::JsonLines
            } else {
                Format::Csv
            };
        }
        if prefix.len() + avail.len() > SNIFF_LIMIT {
            break Format::Csv;
        }
        // All whitespace so far: keep it (it holds line breaks) and look further.
        prefix.extend_from_slice(avail);
        let n = avail.len();
        reader.consume(n);
    };
    if prefix.is_empty() {
        Ok((format, reader))
    } else {
        Ok((format, Box::new(io::Cursor::new(prefix).chain(reader))))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use procpool_tasks::Scientist;
    use serde::Deserialize;
    use std::io::Write;

    #[derive(Deserialize, Debug, PartialEq)]
    struct Sci {
        name: String,
        field: String,
        born: i32,
        nobel: String,
    }

    fn sci(name: &str, field: &str, born: i32, nobel: &str) -> Sci {
        Sci {
            name: name.into(),
            field: field.into(),
            born,
            nobel: nobel.into(),
        }
    }

    fn reader<T: DeserializeOwned>(
        data: impl Into<Vec<u8>>,
        format: Format,
        limit: usize,
    ) -> RecordReader<T> {
        RecordReader::from_reader(
            Box::new(io::Cursor::new(data.into())),
            format,
            "test".to_string(),
            limit,
        )
    }

    fn csv(data: impl Into<Vec<u8>>) -> Vec<Result<Sci, BadRecord>> {
        reader(data, Format::Csv, 1024).collect()
    }

    fn jsonl(data: impl Into<Vec<u8>>) -> Vec<Result<Sci, BadRecord>> {
        reader(data, Format::JsonLines, 1024).collect()
    }

    /// The line and reason of a bad record, panicking on a good one.
    fn bad<T: fmt::Debug>(item: &Result<T, BadRecord>) -> (u64, &str) {
        match item {
            Err(bad) => (bad.line, bad.reason.as_str()),
            Ok(record) => panic!("expected a bad record, got {record:?}"),
        }
    }

    const HEADER: &str = "name,field,born,nobel\n";

    #[test]
    fn demo_yields_the_seven_scientists_in_order() {
        let reader = RecordReader::<Scientist>::demo(1024);
        assert_eq!(reader.source(), "<built-in scientists.csv>");
        assert_eq!(reader.format(), Format::Csv);
        let all: Vec<Scientist> = reader.map(Result::unwrap).collect();
        let names: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "Ada Lovelace",
                "Emmy Noether",
                "Marie Curie",
                "Tu Youyou",
                "Ada Yonath",
                "Vera Rubin",
                "Sally Ride"
            ]
        );
        assert_eq!(
            all[2],
            Scientist {
                name: "Marie Curie".into(),
                field: "physics".into(),
                born: 1867,
                nobel: true
            }
        );
        assert_eq!(all.iter().filter(|s| s.nobel).count(), 3);
        assert_eq!(all[6].born, 1951);
        assert!(!all[6].nobel);
    }

    #[test]
    fn reader_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<RecordReader<Scientist>>();
        assert_send::<RecordReader<std::rc::Rc<String>>>();
    }

    #[test]
    fn csv_happy_path_trims_unquotes_and_skips_blank_lines() {
        let data = "\u{FEFF}name , field,born,nobel\r\n\
                    Ada Lovelace,math,1815,no\r\n\
                    \r\n\
                    \"Curie, Marie\" ,\"phys\"\"ics\", 1867 ,yes\n\
                    \x20\x20\n\
                    \"Multi\nLine\",x,1,no";
        let got: Vec<Sci> = csv(data).into_iter().map(Result::unwrap).collect();
        assert_eq!(
            got,
            [
                sci("Ada Lovelace", "math", 1815, "no"),
                sci("Curie, Marie", "phys\"ics", 1867, "yes"),
                sci("Multi\nLine", "x", 1, "no"),
            ]
        );
    }

    #[test]
    fn csv_into_scientist_reads_yes_no() {
        let data = format!("{HEADER}Marie Curie,physics,1867,yes\nVera Rubin,astronomy,1928,no\n");
        let got: Vec<Scientist> = reader(data, Format::Csv, 1024)
            .map(Result::unwrap)
            .collect();
        assert!(got[0].nobel);
        assert!(!got[1].nobel);
    }

    #[test]
    fn csv_line_numbers_count_header_blank_and_quoted_lines() {
        let data = format!(
            "{HEADER}a,b,1,no\n\n\"two\nlines\",b,x,no\nc,d,2\n\"e\",f,1,no,extra\ng,h,3,yes\n"
        );
        let got = csv(data);
        assert_eq!(got.len(), 5);
        assert_eq!(got[0].as_ref().unwrap(), &sci("a", "b", 1, "no"));
        let (line, reason) = bad(&got[1]);
        assert_eq!(line, 4);
        assert!(reason.contains("field `born`"), "{reason}");
        assert!(reason.contains("invalid digit"), "{reason}");
        assert!(reason.contains("`x`"), "{reason}");
        assert_eq!(
            bad(&got[2]),
            (
                6,
                "malformed CSV: wrong number of fields: expected 4 (as in the header), found 3"
            )
        );
        assert_eq!(
            bad(&got[3]),
            (
                7,
                "malformed CSV: wrong number of fields: expected 4 (as in the header), found 5"
            )
        );
        // Iteration goes on after bad records.
        assert_eq!(got[4].as_ref().unwrap(), &sci("g", "h", 3, "yes"));
    }

    #[test]
    fn csv_missing_field_is_named() {
        let got = csv("name,field,born\nAda,math,1815\n");
        let (line, reason) = bad(&got[0]);
        assert_eq!(line, 2);
        assert!(reason.contains("missing field `nobel`"), "{reason}");
    }

    #[test]
    fn csv_bad_value_for_scientist_names_the_problem() {
        let data = format!("{HEADER}Ada,math,1815,maybe\nTu,chem,1930,yes\n");
        let got: Vec<Result<Scientist, BadRecord>> = reader(data, Format::Csv, 1024).collect();
        let (line, reason) = bad(&got[0]);
        assert_eq!(line, 2);
        assert!(reason.contains("maybe"), "{reason}");
        assert!(got[1].as_ref().unwrap().nobel);
    }

    #[test]
    fn csv_unterminated_quote() {
        let got = csv(format!("{HEADER}a,b,1,no\nc,\"d,2,no\ne,f,3,no\n"));
        assert_eq!(got.len(), 2);
        assert!(got[0].is_ok());
        let (line, reason) = bad(&got[1]);
        assert_eq!(line, 3);
        assert!(reason.contains("unterminated quoted field"), "{reason}");
        // Even in the last field, where csv alone would accept it.
        let got = csv(format!("{HEADER}a,b,1,\"no"));
        assert_eq!(bad(&got[0]).0, 2);
        assert!(bad(&got[0]).1.contains("unterminated"));
    }

    #[test]
    fn csv_empty_header_is_fatal() {
        for data in [",,,\na,b,1,no\n", " , \na,b\n"] {
            let got = csv(data);
            assert_eq!(got.len(), 1, "{data:?}");
            assert_eq!(bad(&got[0]), (1, "empty CSV header (no column names)"));
        }
    }

    #[test]
    fn csv_invalid_utf8() {
        let mut data = HEADER.as_bytes().to_vec();
        data.extend_from_slice(b"Ad\xFFa,math,1815,no\nTu,chem,1930,yes\n");
        let got = csv(data);
        let (line, reason) = bad(&got[0]);
        assert_eq!(line, 2);
        assert!(reason.starts_with("invalid UTF-8"), "{reason}");
        assert_eq!(got[1].as_ref().unwrap(), &sci("Tu", "chem", 1930, "yes"));
        // In the header: fatal.
        let got = csv(b"na\xC3me,field\nx,y\n".to_vec());
        assert_eq!(got.len(), 1);
        assert!(bad(&got[0]).1.starts_with("invalid UTF-8"));
    }

    #[test]
    fn csv_over_limit_record_is_skipped() {
        let long = "x".repeat(500);
        let data = format!("{HEADER}{long},a,1,no\r\n\"{long}\n{long}\",a,1,no\nok,b,2,yes\n");
        let got: Vec<Result<Sci, BadRecord>> = reader(data, Format::Csv, 100).collect();
        assert_eq!(got.len(), 3);
        assert_eq!(
            bad(&got[0]),
            (2, "record is 507 bytes, over the limit of 100 bytes")
        );
        assert_eq!(
            bad(&got[1]),
            (3, "record is 1010 bytes, over the limit of 100 bytes")
        );
        assert_eq!(got[2].as_ref().unwrap(), &sci("ok", "b", 2, "yes"));
    }

    #[test]
    fn csv_over_limit_quoted_field_is_not_buffered() {
        let data = io::Cursor::new(format!("{HEADER}a,\"b"))
            .chain(io::repeat(b'\n').take(1_000_000))
            .chain(io::Cursor::new("\",1,no\nc,d,2,yes\n"));
        let mut reader: RecordReader<Sci> = RecordReader::from_reader(
            Box::new(BufReader::new(data)),
            Format::Csv,
            "big".into(),
            100,
        );
        let err = reader.next().unwrap().unwrap_err();
        assert_eq!(
            (err.line, err.reason.as_str()),
            (2, "record is 1000010 bytes, over the limit of 100 bytes")
        );
        let Parser::Csv(csv) = &mut reader.parser else {
            unreachable!()
        };
        assert!(csv.parser.get_mut().data.capacity() < 1024);
        let ok = reader.next().unwrap().unwrap();
        assert_eq!(ok, sci("c", "d", 2, "yes"));
        assert_eq!(reader.input.line, 1_000_003);
    }

    #[test]
    fn csv_limit_is_exclusive_of_line_terminator() {
        // The header is 21 bytes, and so is the record.
        let row = "abcdefghij,b,2000,yes";
        for data in [
            format!("{HEADER}{row}\r\n"),
            format!("{HEADER}{row}\n"),
            format!("{HEADER}{row}"),
        ] {
            let got: Vec<Result<Sci, BadRecord>> = reader(data.clone(), Format::Csv, 21).collect();
            assert_eq!(got.len(), 1);
            assert!(got[0].is_ok(), "{got:?}");
            // The header is over the limit too: nothing more can be read.
            let got: Vec<Result<Sci, BadRecord>> = reader(data, Format::Csv, 20).collect();
            assert_eq!(got.len(), 1);
            assert_eq!(
                bad(&got[0]),
                (1, "record is 21 bytes, over the limit of 20 bytes")
            );
        }
    }

    #[test]
    fn jsonl_happy_path() {
        let data =
            "\u{FEFF}{\"name\":\"Ada\",\"field\":\"math\",\"born\":1815,\"nobel\":\"no\"}\r\n\
                    \n   \t\n\
                    {\"nobel\":\"yes\",\"born\":1867,\"field\":\"physics\",\"name\":\"Marie\"}";
        let got: Vec<Sci> = jsonl(data).into_iter().map(Result::unwrap).collect();
        assert_eq!(
            got,
            [
                sci("Ada", "math", 1815, "no"),
                sci("Marie", "physics", 1867, "yes")
            ]
        );
        let got: Vec<Scientist> = reader(data, Format::JsonLines, 1024)
            .map(Result::unwrap)
            .collect();
        assert!(!got[0].nobel && got[1].nobel);
    }

    #[test]
    fn jsonl_bad_records_and_continuing() {
        let good = r#"{"name":"A","field":"f","born":1,"nobel":"no"}"#;
        let data = [
            good,
            r#"{"name":"A","field":"f","born":1,"#,
            r#"{"name":"A","field":"f","born":"x","nobel":"no"}"#,
            r#"{"name":"A","field":"f","born":1}"#,
            "",
            r#"{"name":"A","field":"f","born":1,"nobel":"no"} x"#,
            "not json",
            good,
        ]
        .join("\n");
        let got = jsonl(data);
        assert_eq!(got.len(), 7, "{got:?}");
        assert!(got[0].is_ok());
        assert_eq!(bad(&got[1]).0, 2);
        assert!(
            bad(&got[1])
                .1
                .starts_with("invalid JSON: EOF while parsing"),
            "{:?}",
            got[1]
        );
        assert_eq!(bad(&got[2]).0, 3);
        assert!(bad(&got[2])
            .1
            .starts_with("invalid type: string \"x\", expected i32 at column"));
        assert_eq!(bad(&got[3]), (4, "missing field `nobel` at column 33"));
        assert_eq!(bad(&got[4]).0, 6);
        assert!(bad(&got[4]).1.contains("trailing characters"));
        assert_eq!(bad(&got[5]).0, 7);
        assert!(bad(&got[5]).1.starts_with("invalid JSON: expected ident"));
        assert!(got[6].is_ok());
        // The display form.
        let err = got[3].as_ref().unwrap_err();
        assert_eq!(
            err.to_string(),
            "test:4: missing field `nobel` at column 33"
        );
    }

    #[test]
    fn jsonl_invalid_utf8() {
        let mut data =
            b"{\"name\":\"\xC3\",\"field\":\"f\",\"born\":1,\"nobel\":\"no\"}\n".to_vec();
        data.extend_from_slice(br#"{"name":"A","field":"f","born":2,"nobel":"no"}"#);
        let got = jsonl(data);
        assert_eq!(bad(&got[0]), (1, "invalid UTF-8 (at byte 9 of the record)"));
        assert_eq!(got[1].as_ref().unwrap().born, 2);
    }

    #[test]
    fn jsonl_over_limit_line_is_not_buffered() {
        let good = r#"{"name":"A","field":"f","born":2,"nobel":"no"}"#;
        let huge = 10 * 1024 * 1024;
        // Streamed: the 10 MB line never exists in memory, here or there.
        let data = io::Cursor::new(format!("{good}\n"))
            .chain(io::repeat(b' ').take(huge))
            .chain(io::Cursor::new(format!("{good}\r\n{good}\n")));
        let mut reader: RecordReader<Sci> = RecordReader::from_reader(
            Box::new(BufReader::new(data)),
            Format::JsonLines,
            "big".into(),
            100,
        );
        assert!(reader.next().unwrap().is_ok());
        let err = reader.next().unwrap().unwrap_err();
        assert_eq!(err.line, 2);
        assert_eq!(
            err.reason,
            format!(
                "record is {} bytes, over the limit of 100 bytes",
                huge + good.len() as u64
            )
        );
        let Parser::Json(buf) = &reader.parser else {
            unreachable!()
        };
        assert!(buf.capacity() < 1024, "buffer grew to {}", buf.capacity());
        let ok = reader.next().unwrap().unwrap();
        assert_eq!(ok.born, 2);
        assert_eq!(reader.input.line, 3);
        assert!(reader.next().is_none());
        assert!(reader.next().is_none());
    }

    #[test]
    fn jsonl_limit_is_exclusive_of_line_terminator() {
        let good = r#"{"name":"A","field":"f","born":2,"nobel":"no"}"#;
        let n = good.len();
        for data in [format!("{good}\r\n"), format!("{good}\n"), good.to_string()] {
            let got: Vec<Result<Sci, BadRecord>> =
                reader(data.clone(), Format::JsonLines, n).collect();
            assert!(got[0].is_ok(), "{data:?}");
            let got: Vec<Result<Sci, BadRecord>> = reader(data, Format::JsonLines, n - 1).collect();
            assert_eq!(
                bad(&got[0]).1,
                format!("record is {n} bytes, over the limit of {} bytes", n - 1)
            );
        }
    }

    #[test]
    fn empty_inputs_yield_nothing() {
        assert!(jsonl("").is_empty());
        assert!(jsonl("\n \n\r\n").is_empty());
        assert!(csv("").is_empty());
        assert!(csv(HEADER).is_empty());
        assert!(csv("name,field,born,nobel").is_empty());
        assert!(csv("\n\nname,field,born,nobel\r\n\r\n").is_empty());
    }

    /// Fails every read, like a disk gone bad.
    struct Broken;
    impl Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("disk on fire"))
        }
    }

    #[test]
    fn read_error_ends_the_input() {
        for format in [Format::Csv, Format::JsonLines] {
            let good = match format {
                Format::Csv => format!("{HEADER}a,b,1,no\n"),
                Format::JsonLines => {
                    "{\"name\":\"a\",\"field\":\"b\",\"born\":1,\"nobel\":\"no\"}\n".to_string()
                }
            };
            let data = io::Cursor::new(good).chain(Broken);
            let mut reader: RecordReader<Sci> =
                RecordReader::from_reader(Box::new(BufReader::new(data)), format, "x".into(), 100);
            assert!(reader.next().unwrap().is_ok());
            let err = reader.next().unwrap().unwrap_err();
            assert_eq!(err.reason, "read error: disk on fire");
            assert!(reader.next().is_none());
        }
    }

    fn temp_file(name: &str, contents: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        File::create(&path)
            .unwrap()
            .write_all(contents.as_bytes())
            .unwrap();
        (dir, path.to_str().unwrap().to_string())
    }

    #[test]
    fn open_picks_format_from_extension_or_content() {
        let json = "{\"name\":\"a\",\"field\":\"b\",\"born\":1,\"nobel\":\"no\"}\n";
        let csv = format!("{HEADER}a,b,1,no\n");
        let cases = [
            ("x.csv", csv.as_str(), Format::Csv),
            ("x.CSV", csv.as_str(), Format::Csv),
            ("x.jsonl", json, Format::JsonLines),
            ("x.ndjson", json, Format::JsonLines),
            ("x.json", json, Format::JsonLines),
            ("x.txt", json, Format::JsonLines),
            ("x", csv.as_str(), Format::Csv),
            ("x.data", "", Format::Csv),
        ];
        for (name, contents, format) in cases {
            let (_dir, path) = temp_file(name, contents);
            let reader = RecordReader::<Sci>::open(&path, 1000).unwrap();
            assert_eq!(reader.format(), format, "{name}");
            assert_eq!(reader.source(), path);
            let got: Vec<Sci> = reader.map(Result::unwrap).collect();
            assert_eq!(got.len(), usize::from(!contents.is_empty()), "{name}");
        }
    }

    #[test]
    fn sniffing_looks_past_leading_whitespace_without_losing_lines() {
        let bad_json = "{\"name\":1}";
        // More whitespace than one read buffer.
        let padding = " \t\n".repeat(30_000);
        let (_dir, path) = temp_file("input", &format!("\u{FEFF}\n{padding}{bad_json}\n"));
        let mut reader = RecordReader::<Sci>::open(&path, 1000).unwrap();
        assert_eq!(reader.format(), Format::JsonLines);
        assert_eq!(reader.next().unwrap().unwrap_err().line, 30_002);

        let (_dir, path) = temp_file("input", &format!("\u{FEFF}\n\n{HEADER}a,b,x,no\n"));
        let mut reader = RecordReader::<Sci>::open(&path, 1000).unwrap();
        assert_eq!(reader.format(), Format::Csv);
        assert_eq!(reader.next().unwrap().unwrap_err().line, 4);
    }

    #[test]
    fn open_names_the_path() {
        let err = RecordReader::<Sci>::open("/no/such/dir/input.csv", 100).unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with("cannot open /no/such/dir/input.csv: "),
            "{message}"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_str().unwrap();
        let err = RecordReader::<Sci>::open(path, 100).unwrap_err();
        assert!(err.to_string().contains(path), "{err}");
        assert!(err.to_string().contains("directory"), "{err}");
    }

    #[test]
    fn quote_scan_matches_csv_rules() {
        use QuoteState::*;
        assert_eq!(FieldStart.scan(b"a,\"b"), Quoted);
        assert_eq!(FieldStart.scan(b"a\"b"), Unquoted);
        assert_eq!(FieldStart.scan(b" \"b"), Unquoted);
        assert_eq!(FieldStart.scan(b"\"a\"\"b"), Quoted);
        assert_eq!(FieldStart.scan(b"\"a\"\"b\""), QuoteInQuoted);
        assert_eq!(FieldStart.scan(b"\"a\"b,"), FieldStart);
        assert_eq!(Quoted.scan(b"abc"), Quoted);
        assert_eq!(QuoteInQuoted.scan(b"x"), Unquoted);
        assert_eq!(QuoteInQuoted.scan(b""), QuoteInQuoted);
        // Split anywhere, the scan gives the same answer.
        let line = b"\"a,\"\"b\",c\"d,\"e\nf\"\"\",\"";
        for split in 0..line.len() {
            let (a, b) = line.split_at(split);
            assert_eq!(FieldStart.scan(a).scan(b), FieldStart.scan(line), "{split}");
        }
    }

    /// `cargo test --release -p procpool-coordinator -- --ignored --nocapture throughput`
    #[test]
    #[ignore = "a rough benchmark, meaningful in release mode"]
    fn throughput() {
        let n = 1_000_000;
        let mut json = Vec::new();
        let mut csv = HEADER.as_bytes().to_vec();
        for i in 0..n {
            writeln!(
                json,
                r#"{{"name":"Scientist {i}","field":"physics","born":{},"nobel":"no"}}"#,
                1800 + i % 200
            )
            .unwrap();
            writeln!(csv, "Scientist {i},physics,{},no", 1800 + i % 200).unwrap();
        }
        for (format, data) in [(Format::JsonLines, json), (Format::Csv, csv)] {
            let start = std::time::Instant::now();
            let count = reader::<Scientist>(data, format, 1 << 20)
                .map(Result::unwrap)
                .count();
            let secs = start.elapsed().as_secs_f64();
            assert_eq!(count, n as usize);
            eprintln!("{format:?}: {:.2} M records/s", n as f64 / secs / 1e6);
        }
    }
}
