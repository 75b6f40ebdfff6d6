//! Splitting the input into records, without parsing them.
//!
//! A [`Splitter`] reads CSV or JSON-lines input (a file, stdin, or the
//! bundled demo data) in large buffers and cuts it into records: the bytes of
//! each record, the 1-based line it starts on, and nothing else. Fields are
//! never split here: the workers decode records into their task's input
//! (serde_json; csv with the header, which is read here once and sent to
//! them). What can be told without parsing is reported here as a bad record:
//! a record over the size limit, a CSV quoted field that never closes, a CSV
//! header that is empty or not UTF-8 (fatal), a read error (fatal).
//!
//! Record size limit: a record is measured as the bytes of its line(s) in the
//! input, without the final line terminator (`\n` or `\r\n`). A record over
//! `max_record_bytes` is reported as bad and skipped *without* being held in
//! memory: once over the limit the rest of it is read and discarded.
//!
//! JSON lines: one record per line; blank (whitespace-only) lines are skipped.
//! CSV: the first non-blank line is the header; a `\n` inside a quoted field
//! (RFC 4180 quoting, `""` escapes) belongs to the record; blank lines outside
//! quoted fields are skipped. Line terminators are `\n` or `\r\n` (a bare `\r`
//! is not a terminator). A UTF-8 byte order mark at the start is skipped.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// The bundled demo input, compiled into the binary so the demo runs from any
/// directory.
pub const DEMO_CSV: &str = include_str!("../../../data/scientists.csv");

/// The source name of the bundled demo input, as it appears in messages.
pub const DEMO_SOURCE: &str = "<built-in scientists.csv>";

/// The source name of standard input, as it appears in messages.
pub const STDIN_SOURCE: &str = "<stdin>";

/// Bytes asked of the input per read.
const READ_SIZE: usize = 256 << 10;

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

/// A record that could not be read or decoded: where it is and why.
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

/// One item cut out of the input, in input order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A record: `data[start..end]` of its [`Block`], starting on `line`.
    Record {
        /// Offset of its first byte.
        start: usize,
        /// Offset after its last byte (its terminator excluded).
        end: usize,
        /// Its first line.
        line: u64,
    },
    /// `count` records, one per line from `line` on: `data[start..end]` of
    /// its [`Block`] holds them with a `\n` between each two (no blank line
    /// between them, none ending with `\r`). Cut only when asked for
    /// ([`Splitter::lines_together`]).
    Lines {
        /// Offset of the first one's first byte.
        start: usize,
        /// Offset after the last one's last byte (its terminator excluded).
        end: usize,
        /// The first one's line.
        line: u64,
        /// How many.
        count: u64,
    },
    /// A record that cannot be sent.
    Bad {
        /// Its first line.
        line: u64,
        /// Why.
        reason: String,
    },
}

/// The records of one read buffer.
#[derive(Debug, Default)]
pub struct Block {
    /// The buffer the records point into.
    pub data: Vec<u8>,
    /// The records and bad records, in order.
    pub items: Vec<Item>,
}

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
        if memchr::memchr(b'"', bytes).is_none() {
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

/// A record over the limit, being read past.
#[derive(Debug, Clone, Copy)]
struct Discard {
    line: u64,
    /// Bytes of it so far, inner `\n`s included.
    size: u64,
    last: Option<u8>,
}

/// The splitter's read buffer: `bytes[..end]` is the input read and not yet
/// handed off; the bytes after it are initialized but stale. Reads go into
/// them as they are: memory is zeroed once, when the buffer first grows,
/// not before every read.
#[derive(Debug, Default)]
struct ReadBuf {
    bytes: Vec<u8>,
    end: usize,
}

impl std::ops::Deref for ReadBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes[..self.end]
    }
}

impl ReadBuf {
    /// A buffer holding `bytes`.
    fn holding(bytes: Vec<u8>) -> Self {
        let end = bytes.len();
        ReadBuf { bytes, end }
    }

    /// An empty buffer in the memory of `bytes` (a block's, given back):
    /// what it held is overwritten by later reads.
    fn reusing(bytes: Vec<u8>) -> Self {
        ReadBuf { bytes, end: 0 }
    }

    /// The input it holds, as a vector of its own.
    fn into_vec(mut self) -> Vec<u8> {
        self.bytes.truncate(self.end);
        self.bytes
    }

    fn truncate(&mut self, len: usize) {
        self.end = self.end.min(len);
    }

    /// Drop the first `n` bytes.
    fn consume(&mut self, n: usize) {
        self.bytes.copy_within(n..self.end, 0);
        self.end -= n;
    }

    /// Room for `more` bytes after the end.
    fn make_room(&mut self, more: usize) {
        let want = self.end + more;
        if self.bytes.len() < want {
            // Use what the allocation has anyway, zeroed this once.
            let len = want.max(self.bytes.capacity());
            self.bytes.resize(len, 0);
        }
    }

    fn extend_from_slice(&mut self, data: &[u8]) {
        self.make_room(data.len());
        self.bytes[self.end..self.end + data.len()].copy_from_slice(data);
        self.end += data.len();
    }

    /// One read from `reader` after the end (retried when interrupted),
    /// with room for at least a quarter of [`READ_SIZE`]. Returns the bytes
    /// read; on an error, what the buffer holds is unchanged.
    fn read_from(&mut self, reader: &mut (dyn Read + Send)) -> io::Result<usize> {
        if self.bytes.len() - self.end < READ_SIZE / 4 {
            self.make_room(READ_SIZE);
        }
        loop {
            match reader.read(&mut self.bytes[self.end..]) {
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Ok(n) => {
                    self.end += n;
                    return Ok(n);
                }
                Err(err) => return Err(err),
            }
        }
    }
}

/// Cuts an input into [`Block`]s of records; see the module documentation.
pub struct Splitter {
    reader: Box<dyn Read + Send>,
    source: String,
    format: Format,
    limit: usize,
    /// Bytes read and not yet handed off; the current record starts at `rec_start`.
    buf: ReadBuf,
    rec_start: usize,
    /// Bytes of the current CSV record already scanned (whole lines inside a quoted field).
    scan: usize,
    /// The first line of the current record.
    rec_line: u64,
    /// Complete lines consumed.
    line: u64,
    quote: QuoteState,
    discard: Option<Discard>,
    header: Option<Vec<u8>>,
    /// Items cut while looking for the header, for the first block.
    pending: Vec<Item>,
    /// Blocks given back once their records were sent, to be filled again
    /// (fresh large buffers would cost page faults on every read).
    recycled: Option<std::sync::mpsc::Receiver<Block>>,
    /// An item list from a recycled block, for the next block.
    spare_items: Vec<Item>,
    started: bool,
    eof: bool,
    done: bool,
    /// Cut runs of one-line records as [`Item::Lines`].
    together: bool,
}

impl fmt::Debug for Splitter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Splitter")
            .field("source", &self.source)
            .field("format", &self.format)
            .field("line", &self.line)
            .finish_non_exhaustive()
    }
}

fn is_blank(bytes: &[u8]) -> bool {
    bytes.iter().all(u8::is_ascii_whitespace)
}

/// `count` lines, `start..end` of the block from line `line` on: they join
/// the run that ends right before them (with one `\n` between), else start
/// one.
fn add_lines(items: &mut Vec<Item>, start: usize, end: usize, line: u64, count: u64) {
    match items.last_mut() {
        Some(Item::Lines {
            end: e, count: n, ..
        }) if *e + 1 == start => {
            *e = end;
            *n += count;
        }
        _ => items.push(Item::Lines {
            start,
            end,
            line,
            count,
        }),
    }
}

/// Strip a trailing `\r`.
fn strip_cr(bytes: &[u8]) -> &[u8] {
    bytes.strip_suffix(b"\r").unwrap_or(bytes)
}

impl Splitter {
    /// Open `path`; `"-"` is stdin. The format is `format` if given, else
    /// the extension's (see [`Format::from_extension`]), else it is sniffed
    /// from the first non-whitespace byte: `{` means JSON lines, anything
    /// else CSV. Stdin is sniffed the same way.
    pub fn open(
        path: &str,
        format: Option<Format>,
        max_record_bytes: usize,
    ) -> Result<Self, OpenError> {
        let read_error = |err| OpenError::Read {
            path: path.to_string(),
            err,
        };
        if path == "-" {
            let mut stdin: Box<dyn Read + Send> = Box::new(io::stdin());
            let (format, prefix) = match format {
                Some(f) => (f, Vec::new()),
                None => sniff(&mut *stdin).map_err(read_error)?,
            };
            return Ok(Self::new(
                stdin,
                prefix,
                format,
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
        let mut reader: Box<dyn Read + Send> = Box::new(file);
        let (format, prefix) = match format.or_else(|| Format::from_extension(Path::new(path))) {
            Some(f) => (f, Vec::new()),
            None => sniff(&mut *reader).map_err(read_error)?,
        };
        Ok(Self::new(
            reader,
            prefix,
            format,
            path.to_string(),
            max_record_bytes,
        ))
    }

    /// The bundled demo data ([`DEMO_CSV`]).
    pub fn demo(max_record_bytes: usize) -> Self {
        Self::new(
            Box::new(DEMO_CSV.as_bytes()),
            Vec::new(),
            Format::Csv,
            DEMO_SOURCE.to_string(),
            max_record_bytes,
        )
    }

    /// From any reader with a known format; `prefix` is input already read
    /// from it. `source` names the input in messages.
    pub fn new(
        reader: Box<dyn Read + Send>,
        prefix: Vec<u8>,
        format: Format,
        source: String,
        max_record_bytes: usize,
    ) -> Self {
        Splitter {
            reader,
            source,
            format,
            limit: max_record_bytes,
            buf: ReadBuf::holding(prefix),
            rec_start: 0,
            scan: 0,
            rec_line: 1,
            line: 0,
            quote: QuoteState::FieldStart,
            discard: None,
            header: None,
            pending: Vec::new(),
            recycled: None,
            spare_items: Vec::new(),
            started: false,
            eof: false,
            done: false,
            together: false,
        }
    }

    /// Cut consecutive JSON lines as one [`Item::Lines`] rather than one
    /// [`Item::Record`] each.
    pub fn lines_together(&mut self) {
        self.together = true;
    }

    /// Take blocks to reuse from `recycled`.
    pub fn recycle_from(&mut self, recycled: std::sync::mpsc::Receiver<Block>) {
        self.recycled = Some(recycled);
    }

    /// The input's name, as used in messages.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The input's format.
    pub fn format(&self) -> Format {
        self.format
    }

    /// A bad record at `line` of this input.
    pub fn bad(&self, line: u64, reason: String) -> BadRecord {
        BadRecord {
            source: self.source.clone(),
            line,
            reason,
        }
    }

    /// For CSV, read up to the header and return it (`None` for an input
    /// with no header at all); a bad header is an error. `None` for JSON lines.
    pub fn header(&mut self) -> Result<Option<Vec<u8>>, BadRecord> {
        if self.format != Format::Csv {
            return Ok(None);
        }
        let mut items = std::mem::take(&mut self.pending);
        while self.header.is_none() && !self.done {
            self.cut(&mut items);
            if self.header.is_some() || self.done {
                break;
            }
            if self.eof {
                self.finish(&mut items);
                break;
            }
            self.fill(&mut items);
        }
        if self.header.is_none() {
            if let Some(Item::Bad { line, reason }) = items.first() {
                return Err(self.bad(*line, reason.clone()));
            }
        }
        self.pending = items;
        Ok(self.header.clone())
    }

    /// The next block of records; `None` at the end of the input. Blocks
    /// come as soon as a read yields a complete record, so a slow stream
    /// is passed on as it arrives.
    pub fn next_block(&mut self) -> Option<Block> {
        let mut items = std::mem::take(&mut self.pending);
        if items.is_empty() {
            items = std::mem::take(&mut self.spare_items);
        }
        loop {
            if !self.done {
                self.cut(&mut items);
            }
            if !items.is_empty() {
                return Some(self.hand_off(items));
            }
            if self.done {
                return None;
            }
            if self.eof {
                self.finish(&mut items);
                self.done = true;
                continue;
            }
            self.fill(&mut items);
        }
    }

    /// The block of `items`: the buffer goes with them, and the start of
    /// the next record moves to a new buffer.
    fn hand_off(&mut self, items: Vec<Item>) -> Block {
        let tail = &self.buf[self.rec_start..];
        let reused = self.recycled.as_ref().and_then(|r| r.try_recv().ok());
        let (mut next, spare_items) = match reused {
            Some(Block { data, mut items }) => {
                items.clear();
                (ReadBuf::reusing(data), items)
            }
            None => (
                ReadBuf::reusing(Vec::with_capacity(tail.len() + READ_SIZE)),
                Vec::new(),
            ),
        };
        next.extend_from_slice(tail);
        let data = std::mem::replace(&mut self.buf, next).into_vec();
        self.rec_start = 0;
        self.spare_items = spare_items;
        Block { data, items }
    }

    /// Read more input into the buffer.
    fn fill(&mut self, items: &mut Vec<Item>) {
        // Nothing before the current record is needed any more.
        if self.rec_start > 0 {
            self.buf.consume(self.rec_start);
            self.rec_start = 0;
        }
        match self.buf.read_from(&mut *self.reader) {
            Ok(n) => self.eof = n == 0,
            // The buffer is as it was.
            Err(err) => {
                items.push(Item::Bad {
                    line: self.line + 1,
                    reason: format!("read error: {err}"),
                });
                // Retrying a persistent error would loop forever.
                self.done = true;
            }
        }
    }

    fn over_limit(&self, size: u64) -> String {
        format!(
            "record is {size} bytes, over the limit of {} bytes",
            self.limit
        )
    }

    /// Cut every complete record out of the buffer.
    fn cut(&mut self, items: &mut Vec<Item>) {
        if !self.started {
            if self.buf.len() < BOM.len() && !self.eof {
                return; // a BOM may still be coming
            }
            if self.buf.starts_with(BOM) {
                self.rec_start = BOM.len();
            }
            self.started = true;
        }
        while !self.done {
            if let Some(d) = self.discard {
                if !self.skip_discarded(d, items) {
                    return;
                }
                continue;
            }
            if self.together && self.format == Format::JsonLines {
                self.cut_plain_lines(items);
            }
            let from = self.rec_start + self.scan;
            let Some(at) = memchr::memchr(b'\n', &self.buf[from..]).map(|i| from + i) else {
                let held = self.buf.len() - self.rec_start;
                if held > self.limit.saturating_add(1) {
                    if self.format == Format::Csv && self.header.is_none() {
                        // Nothing can be read without the header: say so now
                        // rather than read on to its end (/dev/zero has none).
                        let reason = format!(
                            "the CSV header is over the limit of {} bytes (no line end in its first {held} bytes)",
                            self.limit
                        );
                        return self.push_bad(self.rec_line, reason, items);
                    }
                    // Over the limit whatever follows: keep none of it.
                    if self.format == Format::Csv {
                        self.quote = self.quote.scan(&self.buf[from..]);
                    }
                    self.discard = Some(Discard {
                        line: self.rec_line,
                        size: held as u64,
                        last: self.buf.last().copied(),
                    });
                    self.buf.truncate(self.rec_start);
                    self.scan = 0;
                }
                return;
            };
            self.line += 1;
            match self.format {
                Format::JsonLines => {
                    let content = strip_cr(&self.buf[self.rec_start..at]);
                    if content.len() > self.limit {
                        items.push(Item::Bad {
                            line: self.line,
                            reason: self.over_limit(content.len() as u64),
                        });
                    } else if !is_blank(content) {
                        let (start, end) = (self.rec_start, self.rec_start + content.len());
                        // A line with no `\r` goes in a run.
                        if self.together && end == at {
                            add_lines(items, start, end, self.line, 1);
                        } else {
                            items.push(Item::Record {
                                start,
                                end,
                                line: self.line,
                            });
                        }
                    }
                }
                Format::Csv => {
                    self.quote = self.quote.scan(&self.buf[from..at]);
                    if self.quote == QuoteState::Quoted {
                        // A `\n` inside a quoted field: the record goes on.
                        self.scan = at + 1 - self.rec_start;
                        if self.scan > self.limit.saturating_add(1) {
                            self.discard = Some(Discard {
                                line: self.rec_line,
                                size: self.scan as u64,
                                last: Some(b'\n'),
                            });
                            self.rec_start = at + 1;
                            self.scan = 0;
                        }
                        continue;
                    }
                    let (start, end) = (self.rec_start, at);
                    self.csv_record(start, end, items);
                }
            }
            self.next_record(at + 1);
        }
    }

    /// Cut the complete JSON lines from the current record on into the last
    /// item, an [`Item::Lines`], as long as each is plainly one: not blank
    /// (its first byte is not whitespace), no `\r` at its end, within the
    /// limit. Stops at the first that is not, for [`Splitter::cut`] to
    /// decide, which cuts what this does, one line at a time.
    fn cut_plain_lines(&mut self, items: &mut Vec<Item>) {
        let base = self.rec_start;
        let buf = &self.buf[base..];
        // Lines cut, and bytes of buf they take (their last `\n` included).
        let (mut count, mut taken) = (0u64, 0usize);
        for at in procpool_protocol::newlines(buf) {
            let line = &buf[taken..at];
            let plain = match (line.first(), line.last()) {
                (Some(first), Some(last)) => {
                    !first.is_ascii_whitespace() && *last != b'\r' && line.len() <= self.limit
                }
                _ => false,
            };
            if !plain {
                break;
            }
            count += 1;
            taken = at + 1;
        }
        if count == 0 {
            return;
        }
        add_lines(items, base, base + taken - 1, self.line + 1, count);
        self.line += count;
        self.next_record(base + taken);
    }

    fn next_record(&mut self, start: usize) {
        self.rec_start = start;
        self.scan = 0;
        self.rec_line = self.line + 1;
        self.quote = QuoteState::FieldStart;
    }

    /// Read past a record over the limit; `true` once it has ended.
    fn skip_discarded(&mut self, mut d: Discard, items: &mut Vec<Item>) -> bool {
        let rest = &self.buf[self.rec_start..];
        let Some(i) = memchr::memchr(b'\n', rest) else {
            if self.format == Format::Csv {
                self.quote = self.quote.scan(rest);
            }
            d.size += rest.len() as u64;
            d.last = rest.last().copied().or(d.last);
            self.discard = Some(d);
            self.buf.truncate(self.rec_start);
            return false;
        };
        let segment = &rest[..i];
        self.line += 1;
        d.size += i as u64;
        d.last = segment.last().copied().or(d.last);
        if self.format == Format::Csv {
            self.quote = self.quote.scan(segment);
            if self.quote == QuoteState::Quoted {
                d.size += 1;
                d.last = Some(b'\n');
                self.discard = Some(d);
                self.rec_start += i + 1;
                return true;
            }
        }
        self.discard = None;
        let size = d.size - u64::from(d.last == Some(b'\r'));
        let reason = self.over_limit(size);
        self.push_bad(d.line, reason, items);
        let at = self.rec_start + i;
        self.next_record(at + 1);
        true
    }

    /// A bad record; fatal if it stands where the CSV header should be.
    fn push_bad(&mut self, line: u64, reason: String, items: &mut Vec<Item>) {
        items.push(Item::Bad { line, reason });
        if self.format == Format::Csv && self.header.is_none() {
            self.done = true; // nothing after a bad header can be read
        }
    }

    /// A complete CSV record `buf[start..end]` (its final `\n` excluded).
    fn csv_record(&mut self, start: usize, end: usize, items: &mut Vec<Item>) {
        let content = strip_cr(&self.buf[start..end]);
        let line = self.rec_line;
        if content.len() > self.limit {
            let reason = self.over_limit(content.len() as u64);
            return self.push_bad(line, reason, items);
        }
        let single_line = self.scan == 0;
        if single_line && is_blank(content) {
            return;
        }
        if self.header.is_some() {
            items.push(Item::Record {
                start,
                end: start + content.len(),
                line,
            });
            return;
        }
        let header = content.to_vec();
        match check_header(&header) {
            Ok(()) => self.header = Some(header),
            Err(reason) => self.push_bad(line, reason, items),
        }
    }

    /// The end of the input: its last record may have no terminator.
    fn finish(&mut self, items: &mut Vec<Item>) {
        if self.done {
            return;
        }
        if let Some(d) = self.discard.take() {
            if self.format == Format::Csv && self.quote == QuoteState::Quoted {
                return self.push_bad(d.line, unterminated(), items);
            }
            let size = d.size - u64::from(d.last == Some(b'\r'));
            let reason = self.over_limit(size);
            return self.push_bad(d.line, reason, items);
        }
        let end = self.buf.len();
        if end == self.rec_start {
            return;
        }
        let from = self.rec_start + self.scan;
        self.line += 1;
        match self.format {
            Format::JsonLines => {
                let start = self.rec_start;
                let content = strip_cr(&self.buf[start..end]);
                if content.len() > self.limit {
                    let reason = self.over_limit(content.len() as u64);
                    items.push(Item::Bad {
                        line: self.line,
                        reason,
                    });
                } else if !is_blank(content) {
                    items.push(Item::Record {
                        start,
                        end: start + content.len(),
                        line: self.line,
                    });
                }
            }
            Format::Csv => {
                self.quote = self.quote.scan(&self.buf[from..end]);
                if self.quote == QuoteState::Quoted {
                    let line = self.rec_line;
                    return self.push_bad(line, unterminated(), items);
                }
                let start = self.rec_start;
                self.csv_record(start, end, items);
            }
        }
        self.next_record(end);
    }
}

fn unterminated() -> String {
    "malformed CSV: unterminated quoted field (its closing quote is missing)".into()
}

/// A header must be UTF-8 and name at least one column.
fn check_header(header: &[u8]) -> Result<(), String> {
    if let Err(err) = std::str::from_utf8(header) {
        return Err(format!(
            "invalid UTF-8 (at byte {} of the record)",
            err.valid_up_to()
        ));
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(header);
    let mut fields = csv::ByteRecord::new();
    match reader.read_byte_record(&mut fields) {
        Err(err) => Err(format!("malformed CSV: {err}")),
        Ok(_) if fields.iter().all(|f| f.trim_ascii().is_empty()) => {
            Err("empty CSV header (no column names)".to_string())
        }
        Ok(_) => Ok(()),
    }
}

/// Decide the format of an input with no telling extension from its first
/// non-whitespace byte. Returns what was read, to be split first.
fn sniff(reader: &mut dyn Read) -> io::Result<(Format, Vec<u8>)> {
    let mut prefix = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        if n == 0 {
            return Ok((Format::Csv, prefix));
        }
        let seen = prefix.len();
        prefix.extend_from_slice(&chunk[..n]);
        if prefix.len() < BOM.len() && BOM.starts_with(&prefix) {
            continue;
        }
        let body = prefix.strip_prefix(BOM).unwrap_or(&prefix);
        let skip = prefix.len() - body.len();
        let from = seen.saturating_sub(skip);
        if let Some(&first) = body[from..].iter().find(|b| !b.is_ascii_whitespace()) {
            let format = if first == b'{' {
                Format::JsonLines
            } else {
                Format::Csv
            };
            return Ok((format, prefix));
        }
        if prefix.len() > SNIFF_LIMIT {
            return Ok((Format::Csv, prefix));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Records as (line, text) and bad records as (line, "!" + reason).
    /// A splitter of `data`, named "test".
    fn splitter(data: impl Into<Vec<u8>>, format: Format, limit: usize) -> Splitter {
        let data = Box::new(io::Cursor::new(data.into()));
        Splitter::new(data, Vec::new(), format, "test".into(), limit)
    }

    /// Cut each way, one item per record and lines together
    /// ([`Splitter::lines_together`]), which must agree.
    fn split(data: impl Into<Vec<u8>>, format: Format, limit: usize) -> Vec<(u64, String)> {
        let data = data.into();
        let one_by_one = collect(&mut splitter(data.clone(), format, limit));
        let mut together = splitter(data, format, limit);
        together.lines_together();
        assert_eq!(collect(&mut together), one_by_one, "lines together");
        one_by_one
    }

    fn collect(s: &mut Splitter) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        if let Err(bad) = s.header() {
            out.push((bad.line, format!("!{}", bad.reason)));
        }
        while let Some(block) = s.next_block() {
            out.extend(items_of(&block));
        }
        out
    }

    fn items_of(block: &Block) -> Vec<(u64, String)> {
        block
            .items
            .iter()
            .flat_map(|item| match item {
                Item::Record { start, end, line } => vec![(
                    *line,
                    String::from_utf8_lossy(&block.data[*start..*end]).into_owned(),
                )],
                Item::Lines {
                    start,
                    end,
                    line,
                    count,
                } => {
                    let text = &block.data[*start..*end];
                    let lines: Vec<_> = text
                        .split(|&b| b == b'\n')
                        .enumerate()
                        .map(|(i, l)| (*line + i as u64, String::from_utf8_lossy(l).into_owned()))
                        .collect();
                    assert_eq!(lines.len() as u64, *count, "count of {text:?}");
                    lines
                }
                Item::Bad { line, reason } => vec![(*line, format!("!{reason}"))],
            })
            .collect()
    }

    fn csv(data: impl Into<Vec<u8>>) -> Vec<(u64, String)> {
        split(data, Format::Csv, 1024)
    }

    fn jsonl(data: impl Into<Vec<u8>>) -> Vec<(u64, String)> {
        split(data, Format::JsonLines, 1024)
    }

    fn rows(list: &[(u64, &str)]) -> Vec<(u64, String)> {
        list.iter().map(|(l, s)| (*l, s.to_string())).collect()
    }

    const HEADER: &str = "name,field,born,nobel\n";

    #[test]
    fn demo_yields_the_header_and_seven_records() {
        let mut s = Splitter::demo(1024);
        assert_eq!(s.source(), "<built-in scientists.csv>");
        assert_eq!(s.header().unwrap().unwrap(), b"name,field,born,nobel");
        let got = collect(&mut s);
        assert_eq!(got.len(), 7);
        assert!(got[0].1.starts_with("Ada Lovelace,"), "{got:?}");
        assert_eq!(got[0].0, 2);
    }

    #[test]
    fn csv_keeps_quoted_newlines_skips_blank_lines_and_counts_lines() {
        let data = "\u{FEFF}name , field,born,nobel\r\n\
                    Ada Lovelace,math,1815,no\r\n\
                    \r\n\
                    \"Curie, Marie\" ,\"phys\"\"ics\", 1867 ,yes\n\
                    \x20\x20\n\
                    \"Multi\nLine\",x,1,no\n\
                    last,y,2,no";
        let mut s = splitter(data, Format::Csv, 1024);
        assert_eq!(s.header().unwrap().unwrap(), b"name , field,born,nobel");
        assert_eq!(
            collect(&mut s),
            rows(&[
                (2, "Ada Lovelace,math,1815,no"),
                (4, "\"Curie, Marie\" ,\"phys\"\"ics\", 1867 ,yes"),
                (6, "\"Multi\nLine\",x,1,no"),
                (8, "last,y,2,no"),
            ])
        );
    }

    #[test]
    fn csv_unterminated_quote() {
        let got = csv(format!("{HEADER}a,b,1,no\nc,\"d,2,no\ne,f,3,no\n"));
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, 2);
        assert_eq!(got[1].0, 3);
        assert!(got[1].1.contains("unterminated quoted field"), "{got:?}");
        let got = csv(format!("{HEADER}a,b,1,\"no"));
        assert_eq!(got[0].0, 2);
        assert!(got[0].1.contains("unterminated"));
    }

    #[test]
    fn csv_bad_header_is_fatal() {
        for data in [",,,\na,b,1,no\n", " , \na,b\n"] {
            assert_eq!(
                csv(data),
                rows(&[(1, "!empty CSV header (no column names)")]),
                "{data:?}"
            );
        }
        let got = csv(b"na\xC3me,field\nx,y\n".to_vec());
        assert_eq!(got.len(), 1);
        assert!(got[0].1.starts_with("!invalid UTF-8"));
    }

    #[test]
    fn csv_over_limit_record_is_skipped() {
        let long = "x".repeat(500);
        let data = format!("{HEADER}{long},a,1,no\r\n\"{long}\n{long}\",a,1,no\nok,b,2,yes\n");
        assert_eq!(
            split(data, Format::Csv, 100),
            rows(&[
                (2, "!record is 507 bytes, over the limit of 100 bytes"),
                (3, "!record is 1010 bytes, over the limit of 100 bytes"),
                (5, "ok,b,2,yes"),
            ])
        );
    }

    #[test]
    fn over_limit_records_are_not_buffered() {
        let data = io::Cursor::new(format!("{HEADER}a,\"b"))
            .chain(io::repeat(b'\n').take(1_000_000))
            .chain(io::Cursor::new("\",1,no\nc,d,2,yes\n"));
        let mut s = Splitter::new(Box::new(data), Vec::new(), Format::Csv, "big".into(), 100);
        assert!(s.header().unwrap().is_some());
        let mut biggest = 0;
        let mut got = Vec::new();
        while let Some(block) = s.next_block() {
            biggest = biggest.max(block.data.capacity());
            got.extend(items_of(&block));
        }
        assert!(biggest < 2 * READ_SIZE, "{biggest}");
        assert_eq!(
            got,
            rows(&[
                (2, "!record is 1000010 bytes, over the limit of 100 bytes"),
                (1_000_003, "c,d,2,yes")
            ])
        );

        let good = r#"{"n":2}"#;
        let huge: usize = 10 * 1024 * 1024;
        let data = io::Cursor::new(format!("{good}\n"))
            .chain(io::repeat(b' ').take(huge as u64))
            .chain(io::Cursor::new(format!("{good}\r\n{good}\n")));
        let mut s = Splitter::new(
            Box::new(data),
            Vec::new(),
            Format::JsonLines,
            "big".into(),
            100,
        );
        let mut max_block = 0;
        let mut got = Vec::new();
        while let Some(block) = s.next_block() {
            max_block = max_block.max(block.data.capacity());
            got.extend(block.items);
        }
        assert!(max_block < 2 * READ_SIZE, "{max_block}");
        assert_eq!(got.len(), 3);
        assert_eq!(
            got[1],
            Item::Bad {
                line: 2,
                reason: format!(
                    "record is {} bytes, over the limit of 100 bytes",
                    huge + good.len()
                )
            }
        );
        assert!(matches!(got[2], Item::Record { line: 3, .. }));
    }

    #[test]
    fn limit_is_exclusive_of_line_terminator() {
        let row = "abcdefghij,b,2000,yes"; // 21 bytes, as is the header
        for data in [
            format!("{HEADER}{row}\r\n"),
            format!("{HEADER}{row}\n"),
            format!("{HEADER}{row}"),
        ] {
            assert_eq!(split(data.clone(), Format::Csv, 21), rows(&[(2, row)]));
            assert_eq!(
                split(data, Format::Csv, 20),
                rows(&[(1, "!record is 21 bytes, over the limit of 20 bytes")])
            );
        }
        let good = r#"{"name":"A","born":2}"#;
        let n = good.len();
        for data in [format!("{good}\r\n"), format!("{good}\n"), good.to_string()] {
            assert_eq!(
                split(data.clone(), Format::JsonLines, n),
                rows(&[(1, good)])
            );
            assert_eq!(
                split(data, Format::JsonLines, n - 1)[0].1,
                format!("!record is {n} bytes, over the limit of {} bytes", n - 1)
            );
        }
    }

    #[test]
    fn jsonl_lines_are_records_and_blank_lines_are_skipped() {
        let data = "\u{FEFF}{\"a\":1}\r\n\n   \t\n{\"a\":2}\nnot json\n{\"a\":3}";
        assert_eq!(
            jsonl(data),
            rows(&[
                (1, "{\"a\":1}"),
                (4, "{\"a\":2}"),
                (5, "not json"),
                (6, "{\"a\":3}")
            ])
        );
    }

    #[test]
    fn consecutive_plain_json_lines_are_cut_as_one_item() {
        let data = "{\"a\":1}\n{\"a\":2}\n {\"a\":3}\n\n{\"a\":4}\r\n{\"a\":5}\n{\"a\":6}\n";
        let mut s = splitter(data, Format::JsonLines, 1024);
        s.lines_together();
        let block = s.next_block().unwrap();
        let lines = |start, end, line, count| Item::Lines {
            start,
            end,
            line,
            count,
        };
        // 1-3 together (a leading space is no blank line), then after the
        // blank line 4 alone (its `\r` stays out of it), then 5-6.
        assert_eq!(
            block.items,
            vec![
                lines(0, 24, 1, 3),
                Item::Record {
                    start: 26,
                    end: 33,
                    line: 5
                },
                lines(35, 50, 6, 2),
            ]
        );
        assert_eq!(&block.data[..24], b"{\"a\":1}\n{\"a\":2}\n {\"a\":3}");
        assert!(s.next_block().is_none());
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

    /// Gives its data in pieces of `step` bytes, as a pipe might.
    struct Trickle(Vec<u8>, usize, usize);
    impl Read for Trickle {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.1.min(out.len()).min(self.0.len() - self.2);
            out[..n].copy_from_slice(&self.0[self.2..self.2 + n]);
            self.2 += n;
            Ok(n)
        }
    }

    #[test]
    fn records_split_across_reads_come_out_whole() {
        let data = format!("\u{FEFF}{HEADER}a,\"b\nc\",1,no\r\nd,e,2,yes\n\ng,h,3,no");
        let whole = split(data.clone(), Format::Csv, 1024);
        assert_eq!(whole.len(), 3);
        for step in [1, 2, 3, 5, 7] {
            let mut s = Splitter::new(
                Box::new(Trickle(data.clone().into_bytes(), step, 0)),
                Vec::new(),
                Format::Csv,
                "t".into(),
                1024,
            );
            assert_eq!(collect(&mut s), whole, "step {step}");
        }
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
        let data = io::Cursor::new("{\"a\":1}\n").chain(Broken);
        let mut s = Splitter::new(
            Box::new(data),
            Vec::new(),
            Format::JsonLines,
            "x".into(),
            100,
        );
        assert_eq!(
            collect(&mut s),
            rows(&[(1, "{\"a\":1}"), (2, "!read error: disk on fire")])
        );
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
    fn open_picks_format_from_option_extension_or_content() {
        let json = "{\"name\":\"a\"}\n";
        let csv = format!("{HEADER}a,b,1,no\n");
        let cases = [
            ("x.csv", csv.as_str(), None, Format::Csv),
            ("x.CSV", csv.as_str(), None, Format::Csv),
            ("x.jsonl", json, None, Format::JsonLines),
            ("x.ndjson", json, None, Format::JsonLines),
            ("x.json", json, None, Format::JsonLines),
            ("x.txt", json, None, Format::JsonLines),
            ("x", csv.as_str(), None, Format::Csv),
            ("x.data", "", None, Format::Csv),
            ("x.csv", json, Some(Format::JsonLines), Format::JsonLines),
        ];
        for (name, contents, given, format) in cases {
            let (_dir, path) = temp_file(name, contents);
            let mut s = Splitter::open(&path, given, 1000).unwrap();
            assert_eq!(s.format(), format, "{name}");
            assert_eq!(s.source(), path);
            assert_eq!(
                collect(&mut s).len(),
                usize::from(!contents.is_empty()),
                "{name}"
            );
        }
    }

    #[test]
    fn sniffing_looks_past_leading_whitespace_without_losing_lines() {
        let padding = " \t\n".repeat(30_000);
        let (_dir, path) = temp_file("input", &format!("\u{FEFF}\n{padding}{{\"a\":1}}\n"));
        let mut s = Splitter::open(&path, None, 1000).unwrap();
        assert_eq!(s.format(), Format::JsonLines);
        assert_eq!(collect(&mut s), rows(&[(30_002, "{\"a\":1}")]));

        let (_dir, path) = temp_file("input", &format!("\u{FEFF}\n\n{HEADER}a,b,x,no\n"));
        let mut s = Splitter::open(&path, None, 1000).unwrap();
        assert_eq!(s.format(), Format::Csv);
        assert_eq!(collect(&mut s), rows(&[(4, "a,b,x,no")]));
    }

    #[test]
    fn open_names_the_path() {
        let err = Splitter::open("/no/such/dir/input.csv", None, 100).unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with("cannot open /no/such/dir/input.csv: "),
            "{message}"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_str().unwrap();
        let err = Splitter::open(path, None, 100).unwrap_err();
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
        let line = b"\"a,\"\"b\",c\"d,\"e\nf\"\"\",\"";
        for split in 0..line.len() {
            let (a, b) = line.split_at(split);
            assert_eq!(FieldStart.scan(a).scan(b), FieldStart.scan(line), "{split}");
        }
    }
}
