//! Any `:authority` on the Unix socket. hyper's HTTP/2 layer (h2) resets every stream whose `:authority`
//! does not parse as a URI authority (`RST_STREAM` PROTOCOL_ERROR, logged as "malformed authority"), and
//! h2 has no switch to relax that. Over a Unix socket the authority means nothing, but standard clients still
//! send one: gRPC C-core (Python, C++, Ruby, PHP, …) sends the socket path percent-encoded
//! (`run%2Fkiln%2Fkilnd.sock`), grpc-java and older grpc-go the bare path (`/run/kiln/kilnd.sock`). So all
//! of them failed every call unless their user overrode the authority.
//!
//! [`AuthorityRead`] sits between the connection and hyper on the read side and rewrites those requests:
//! it follows the client's frames, decodes each header block (HEADERS and its CONTINUATIONs) with the
//! client's HPACK state, replaces an `:authority` that h2 would refuse with `localhost`, and hands hyper
//! the block re-encoded as literals that never touch HPACK's dynamic table — hyper's table stays empty,
//! so the two HPACK states cannot drift apart whatever the client indexes. Every other frame, and the
//! preface, passes through unchanged. The write side is untouched. A connection whose first request has an
//! authority h2 takes (tonic, grpc-go, kiln's own client) is copied as it comes from then on, nothing decoded:
//! a client's authority is its channel's, the same on every request.
//!
//! What h2 would refuse is still refused, the same way where it matters: a header block is buffered only up
//! to [`MAX_BLOCK`] bytes, and one whose decoded header list passes [`ABUSE_LIST`] closes the connection
//! (h2: GOAWAY); a request whose list reaches [`HYPER_LIST`] reaches hyper as its pseudo-headers and a
//! small run of static-table fields that keeps it at that size, so hyper answers 431 and REFUSED_STREAM
//! as it would have, and the connection goes on.
//!
//! Length: about 460 lines of code and 280 of tests. The HPACK decoder, the header rewrite and the frame
//! bookkeeping share one invariant (the connection's dynamic table must stay in step with the client's), so
//! they stay in one file with the tests that pin it.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::codegen::http::uri::Authority;

/// The client's connection preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The largest frame a client may send: SETTINGS_MAX_FRAME_SIZE as kilnd advertises it (h2's default; the
/// server builder in `mod.rs` leaves it alone). The re-encoded frames are cut to it too.
pub const MAX_FRAME: usize = 16_384;
/// The largest encoded header block kept while its CONTINUATIONs arrive: as much as h2 itself takes (a
/// HEADERS frame and 5 CONTINUATIONs at kilnd's frame and header-list sizes) before it ends the connection.
pub const MAX_BLOCK: usize = 6 * MAX_FRAME;
/// SETTINGS_MAX_HEADER_LIST_SIZE as hyper advertises it for kilnd (its default, which the server builder
/// leaves alone), in decoded size (RFC 7541 §4.1: name + value + 32 per field): h2 refuses a request whose
/// list reaches it.
pub const HYPER_LIST: usize = 16 * 1024;
/// The decoded size past which h2 ends the connection instead (4 × [`HYPER_LIST`]).
pub const ABUSE_LIST: usize = 4 * HYPER_LIST;
/// A field from HPACK's static table (16: `accept-encoding: gzip, deflate`, 60 bytes decoded) that fills a
/// refused request's list up to [`HYPER_LIST`], one byte each.
const FILLER: u8 = 0x80 | 16;
const FILLER_SIZE: usize = "accept-encoding".len() + "gzip, deflate".len() + 32;
/// HPACK's dynamic table size: SETTINGS_HEADER_TABLE_SIZE, which kilnd leaves at its default.
const TABLE_SIZE: usize = 4096;
/// What a refused authority becomes.
const REPLACEMENT: &[u8] = b"localhost";

const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

fn protocol(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

#[derive(Debug)]
enum State {
    /// `matched` bytes of the preface seen so far.
    Preface { matched: usize },
    /// Collecting a 9-byte frame header.
    FrameHeader { have: usize },
    /// Copying `remaining` payload bytes of a frame that is not a header block.
    Copy { remaining: usize },
    /// Collecting the payload of a HEADERS or CONTINUATION frame.
    Block { kind: u8, flags: u8, stream: u32, len: usize },
    /// Not HTTP/2 (no preface), or past a frame hyper will refuse anyway: everything is copied as it is.
    Verbatim,
}

/// The header block being collected.
#[derive(Debug)]
struct Pending {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
}

/// The client-to-server half of an HTTP/2 connection, rewritten as the module docs say. Pure bytes in, bytes
/// out, so it is tested without sockets.
pub struct Rewriter {
    state: State,
    header: [u8; 9],
    frame: Vec<u8>,
    block: Vec<u8>,
    pending: Option<Pending>,
    decoder: loona_hpack::Decoder<'static>,
    /// The connection's first header block needed no rewrite: it reached hyper as the client encoded it (only
    /// its framing redone), and from the next byte on everything is copied as it comes ([`State::Verbatim`]).
    /// A client's authority is its channel's, the same on every request of a connection; one whose later
    /// request had an authority h2 refuses gets what h2 does without this layer, that stream reset.
    settled: bool,
    /// Authorities replaced on this connection (the first is logged).
    pub rewritten: u64,
}

impl Default for Rewriter {
    fn default() -> Self {
        Rewriter::new()
    }
}

impl Rewriter {
    pub fn new() -> Rewriter {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(TABLE_SIZE);
        Rewriter {
            state: State::Preface { matched: 0 },
            header: [0; 9],
            frame: Vec::new(),
            block: Vec::new(),
            pending: None,
            decoder,
            settled: false,
            rewritten: 0,
        }
    }

    /// Consumes `input` (the bytes as the client sent them) and appends what hyper should read to `out`. An
    /// error is a connection error: the connection must be closed.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        while !input.is_empty() {
            match self.state {
                State::Verbatim => {
                    out.extend_from_slice(input);
                    return Ok(());
                }
                State::Preface { matched } => {
                    let n = (PREFACE.len() - matched).min(input.len());
                    let (head, rest) = input.split_at(n);
                    out.extend_from_slice(head);
                    input = rest;
                    self.state = if head != &PREFACE[matched..matched + n] {
                        State::Verbatim
                    } else if matched + n == PREFACE.len() {
                        State::FrameHeader { have: 0 }
                    } else {
                        State::Preface { matched: matched + n }
                    };
                }
                State::FrameHeader { have } => {
                    let n = (9 - have).min(input.len());
                    self.header[have..have + n].copy_from_slice(&input[..n]);
                    input = &input[n..];
                    if have + n < 9 {
                        self.state = State::FrameHeader { have: have + n };
                    } else {
                        self.frame_header(out)?;
                    }
                }
                State::Copy { remaining } => {
                    let n = remaining.min(input.len());
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.state = if n == remaining {
                        State::FrameHeader { have: 0 }
                    } else {
                        State::Copy { remaining: remaining - n }
                    };
                }
                State::Block { kind, flags, stream, len } => {
                    let n = (len - self.frame.len()).min(input.len());
                    self.frame.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    if self.frame.len() == len {
                        self.header_frame(kind, flags, stream, out)?;
                        self.frame.clear();
                        self.state = self.next_frame();
                    }
                }
            }
        }
        // A frame with an empty payload is complete as soon as its header is.
        if let State::Block { kind, flags, stream, len: 0 } = self.state {
            self.header_frame(kind, flags, stream, out)?;
            self.state = self.next_frame();
        }
        Ok(())
    }

    /// The state after a header frame: the next frame's header, or verbatim copying once the first block
    /// needed no rewrite.
    fn next_frame(&self) -> State {
        if self.settled {
            State::Verbatim
        } else {
            State::FrameHeader { have: 0 }
        }
    }

    /// A whole frame header has arrived.
    fn frame_header(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        let h = self.header;
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
        let (kind, flags) = (h[3], h[4]);
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        let in_block = self.pending.as_ref().map(|p| p.stream);
        if let Some(s) = in_block {
            if kind != CONTINUATION || stream != s {
                return Err(protocol("HTTP/2: a header block interrupted before END_HEADERS"));
            }
        }
        let block = kind == HEADERS || (kind == CONTINUATION && in_block.is_some());
        if !block {
            // Including a CONTINUATION outside a block, which hyper refuses as a connection error.
            out.extend_from_slice(&h);
            self.state = if len == 0 { State::FrameHeader { have: 0 } } else { State::Copy { remaining: len } };
            return Ok(());
        }
        if len > MAX_FRAME {
            return Err(protocol(format!(
                "HTTP/2: a {len}-byte header frame (SETTINGS_MAX_FRAME_SIZE is {MAX_FRAME})"
            )));
        }
        self.frame.clear();
        self.state = State::Block { kind, flags, stream, len };
        Ok(())
    }

    /// A whole HEADERS or CONTINUATION frame (payload in `self.frame`) has arrived.
    fn header_frame(&mut self, kind: u8, flags: u8, stream: u32, out: &mut Vec<u8>) -> io::Result<()> {
        let p = &self.frame;
        let fragment = if kind == HEADERS {
            let mut start = 0;
            let mut pad = 0;
            if flags & PADDED != 0 {
                pad = usize::from(*p.first().ok_or_else(|| protocol("HTTP/2: PADDED HEADERS without a pad length"))?);
                start = 1;
            }
            let mut priority = None;
            if flags & PRIORITY != 0 {
                let b = p.get(start..start + 5).ok_or_else(|| protocol("HTTP/2: HEADERS too short for PRIORITY"))?;
                let mut fields = [0; 5];
                fields.copy_from_slice(b);
                priority = Some(fields);
                start += 5;
            }
            let end = p.len().checked_sub(pad).filter(|&e| e >= start);
            let end = end.ok_or_else(|| protocol("HTTP/2: HEADERS padding longer than the frame"))?;
            self.pending = Some(Pending { stream, end_stream: flags & END_STREAM != 0, priority });
            self.block.clear();
            start..end
        } else {
            0..p.len()
        };
        if self.block.len() + fragment.len() > MAX_BLOCK {
            return Err(protocol(format!("HTTP/2: a header block over {MAX_BLOCK} bytes")));
        }
        self.block.extend_from_slice(&self.frame[fragment]);
        if flags & END_HEADERS != 0 {
            self.finish_block(out)?;
        }
        Ok(())
    }

    /// Decodes the collected block and writes it out as HEADERS and CONTINUATION frames: as the client encoded
    /// it when it is the connection's first and needs no rewrite ([`Rewriter::settled`]), re-encoded otherwise.
    fn finish_block(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        let Some(pending) = self.pending.take() else { return Ok(()) };
        // Called again after a first block only when that block was rewritten: hyper's table is then the empty
        // one this layer keeps it at, and every block is re-encoded.
        let first = self.rewritten == 0;
        let mut encoded = Vec::with_capacity(self.block.len() + 64);
        // Decoded size so far; where the leading pseudo-headers end in `encoded`.
        let (mut size, mut pseudo_end, mut in_pseudo) = (0usize, 0, true);
        let mut refused: Option<Vec<u8>> = None;
        let mut rewritten = 0;
        self.decoder
            .decode_with_cb(&self.block, |name, value| {
                // Past the limit decoding goes on all the same: it keeps the client's HPACK table in step.
                size = size.saturating_add(name.len() + value.len() + 32);
                if size >= HYPER_LIST {
                    return;
                }
                in_pseudo &= name.starts_with(b":");
                let value: &[u8] = if &*name == b":authority" && Authority::try_from(&*value).is_err() {
                    rewritten += 1;
                    refused.get_or_insert_with(|| value.to_vec());
                    REPLACEMENT
                } else {
                    &value
                };
                literal(&name, value, &mut encoded);
                if in_pseudo {
                    pseudo_end = encoded.len();
                }
            })
            .map_err(|e| protocol(format!("HTTP/2: HPACK: {e:?}")))?;
        if size > ABUSE_LIST {
            return Err(protocol(format!("HTTP/2: a header list of {size} bytes decoded")));
        }
        if first && rewritten == 0 {
            // What hyper would have read without this layer (a list past HYPER_LIST included: hyper refuses it
            // itself, as it would have), re-framed; and everything after it as it comes.
            emit(&pending, &self.block, out);
            self.block = Vec::new();
            self.settled = true;
            return Ok(());
        }
        if size >= HYPER_LIST {
            encoded.truncate(pseudo_end);
            encoded.resize(pseudo_end + HYPER_LIST.div_ceil(FILLER_SIZE), FILLER);
        }
        if let Some(v) = refused {
            if self.rewritten == 0 {
                let authority = String::from_utf8_lossy(&v);
                tracing::debug!(authority = %authority.escape_debug(), "an :authority h2 would refuse; serving it as localhost");
            }
            self.rewritten += rewritten;
        }

        emit(&pending, &encoded, out);
        self.block.clear();
        self.block.shrink_to(MAX_FRAME);
        Ok(())
    }
}

/// Writes the header block `encoded` as a HEADERS frame with `pending`'s priority and END_STREAM, and as
/// many CONTINUATIONs as [`MAX_FRAME`] needs. (With kilnd's sizes one frame holds any list hyper accepts:
/// the literals are never longer than the list's decoded size.)
fn emit(pending: &Pending, encoded: &[u8], out: &mut Vec<u8>) {
    let mut flags = if pending.end_stream { END_STREAM } else { 0 };
    let mut room = MAX_FRAME;
    if pending.priority.is_some() {
        flags |= PRIORITY;
        room -= 5;
    }
    let (first, mut rest) = encoded.split_at(room.min(encoded.len()));
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    let prefix = pending.priority.as_ref().map_or(&[][..], |p| &p[..]);
    frame(HEADERS, flags, pending.stream, &[prefix, first], out);
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(MAX_FRAME.min(rest.len()));
        rest = tail;
        frame(CONTINUATION, if rest.is_empty() { END_HEADERS } else { 0 }, pending.stream, &[chunk], out);
    }
}

/// Appends one frame whose payload is the concatenation of `parts`.
fn frame(kind: u8, flags: u8, stream: u32, parts: &[&[u8]], out: &mut Vec<u8>) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let len = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
    out.extend_from_slice(&len[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    for p in parts {
        out.extend_from_slice(p);
    }
}

/// HPACK "literal header field without indexing — new name" (RFC 7541 §6.2.2), plain strings.
fn literal(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.push(0);
    string(name, out);
    string(value, out);
}

/// An HPACK string literal without Huffman coding: a 7-bit-prefix length, then the octets (RFC 7541 §5.1–5.2).
fn string(s: &[u8], out: &mut Vec<u8>) {
    let mut n = s.len();
    if n < 0x7f {
        out.push(n as u8);
    } else {
        out.push(0x7f);
        n -= 0x7f;
        while n >= 0x80 {
            out.push((n & 0x7f) as u8 | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }
    out.extend_from_slice(s);
}

/// A connection's read side passed through a [`Rewriter`]; writes go straight through.
pub struct AuthorityRead<S> {
    io: S,
    rewriter: Rewriter,
    /// Bytes read from `io`, before rewriting.
    scratch: Vec<u8>,
    /// Rewritten bytes hyper has not read yet, from `out_pos`.
    out: Vec<u8>,
    out_pos: usize,
}

/// How much is read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;

impl<S> AuthorityRead<S> {
    pub fn new(io: S) -> AuthorityRead<S> {
        AuthorityRead { io, rewriter: Rewriter::new(), scratch: Vec::new(), out: Vec::new(), out_pos: 0 }
    }

    pub fn get_ref(&self) -> &S {
        &self.io
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityRead<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_pos < this.out.len() {
                let n = (this.out.len() - this.out_pos).min(buf.remaining());
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out.shrink_to(READ_CHUNK);
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            this.scratch.resize(READ_CHUNK, 0);
            let mut rb = ReadBuf::new(&mut this.scratch);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut rb))?;
            let got = rb.filled().len();
            if got == 0 {
                // End of stream; a frame cut short stays unsent, as hyper would have found it incomplete.
                return Poll::Ready(Ok(()));
            }
            this.rewriter.feed(&this.scratch[..got], &mut this.out)?;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityRead<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// HPACK "literal with incremental indexing — indexed name" (RFC 7541 §6.2.1), name index < 63.
    fn indexed_literal(name: u8, value: &[u8]) -> Vec<u8> {
        let mut out = vec![0x40 | name];
        string(value, &mut out);
        out
    }

    fn frame_bytes(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        frame(kind, flags, stream, &[payload], &mut out);
        out
    }

    /// A request block: GET (2), http (6), / (4), then `authority` added to the dynamic table.
    fn request_block(authority: &[u8]) -> Vec<u8> {
        let mut b = vec![0x82, 0x86, 0x84];
        b.extend(indexed_literal(1, authority));
        b
    }

    /// Feeds `input` in pieces of `step` bytes.
    fn run(input: &[u8], step: usize) -> io::Result<Vec<u8>> {
        let mut r = Rewriter::new();
        let mut out = Vec::new();
        for piece in input.chunks(step.max(1)) {
            r.feed(piece, &mut out)?;
        }
        Ok(out)
    }

    /// Splits rewritten output (after the preface) into frames: (kind, flags, stream, payload).
    fn frames(out: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        assert_eq!(&out[..PREFACE.len()], PREFACE);
        let mut rest = &out[PREFACE.len()..];
        let mut got = Vec::new();
        while !rest.is_empty() {
            let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
            let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
            assert!(len <= MAX_FRAME);
            got.push((rest[3], rest[4], stream, rest[9..9 + len].to_vec()));
            rest = &rest[9 + len..];
        }
        got
    }

    /// Decodes the header blocks of `frames` in order, as hyper would, with one HPACK state.
    fn header_lists(frames: &[(u8, u8, u32, Vec<u8>)]) -> Vec<Vec<(String, String)>> {
        let mut d = loona_hpack::Decoder::new();
        let mut lists = Vec::new();
        let mut block = Vec::new();
        for (kind, flags, _, payload) in frames {
            match *kind {
                HEADERS => {
                    let skip = if flags & PRIORITY != 0 { 5 } else { 0 };
                    block.extend_from_slice(&payload[skip..]);
                }
                CONTINUATION => block.extend_from_slice(payload),
                _ => continue,
            }
            if flags & END_HEADERS != 0 {
                let list = d.decode(&block).unwrap();
                let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
                lists.push(list.into_iter().map(|(n, v)| (text(n), text(v))).collect());
                block.clear();
            }
        }
        lists
    }

    fn authority(list: &[(String, String)]) -> &str {
        &list.iter().find(|(n, _)| n == ":authority").unwrap().1
    }

    fn connection(blocks: &[(u32, Vec<u8>)]) -> Vec<u8> {
        let mut input = PREFACE.to_vec();
        input.extend(frame_bytes(0x4, 0, 0, &[]));
        for (stream, block) in blocks {
            input.extend(frame_bytes(HEADERS, END_HEADERS, *stream, block));
            input.extend(frame_bytes(0x0, END_STREAM, *stream, &[0, 0, 0, 0, 0]));
        }
        input
    }

    #[test]
    fn refused_authorities_become_localhost_and_the_rest_is_kept() {
        // C-core's percent-encoded path, then grpc-java's bare path, then a valid one; the fourth request
        // names the second's authority by its dynamic-table index (62 is the newest entry).
        let input = connection(&[
            (1, request_block(b"run%2Fkiln%2Fkilnd.sock")),
            (3, request_block(b"/run/kiln/kilnd.sock")),
            (5, request_block(b"localhost:50051")),
            (7, vec![0x82, 0x86, 0x84, 0xbf]),
        ]);
        for step in [1, 2, 7, 9, 10, 64, input.len()] {
            let out = run(&input, step).unwrap();
            let fr = frames(&out);
            let lists = header_lists(&fr);
            assert_eq!(lists.len(), 4);
            assert_eq!(authority(&lists[0]), "localhost");
            assert_eq!(authority(&lists[1]), "localhost");
            assert_eq!(authority(&lists[2]), "localhost:50051");
            assert_eq!(authority(&lists[3]), "localhost");
            for l in &lists {
                let names: Vec<&str> = l.iter().map(|(n, _)| n.as_str()).collect();
                assert_eq!(names, [":method", ":scheme", ":path", ":authority"]);
                assert_eq!(l[0].1, "GET");
                assert_eq!(l[2].1, "/");
            }
            // SETTINGS and DATA frames are passed on unchanged.
            let data: Vec<_> = fr.iter().filter(|f| f.0 == 0).collect();
            assert_eq!(data.len(), 4);
            assert!(data.iter().all(|f| f.1 == END_STREAM && f.3 == [0, 0, 0, 0, 0]));
            assert_eq!(fr[0], (0x4, 0, 0, vec![]));
        }
    }

    #[test]
    fn a_connection_whose_first_authority_h2_takes_passes_unchanged() {
        // A valid authority first: that block reaches hyper as the client encoded it, and every byte after it is
        // copied as it came (a later refused authority included: h2 resets that stream, as it would without
        // this layer).
        let blocks =
            [(1, request_block(b"localhost:1")), (3, vec![0x82, 0x86, 0x84, 0xbe]), (5, request_block(b"a%2Fb"))];
        let input = connection(&blocks);
        for step in [1, 9, 1 << 20] {
            let out = run(&input, step).unwrap();
            assert_eq!(out, input, "step {step}");
        }
        // A refused one first: it and every later block are re-encoded, a later valid one included.
        let blocks = [
            (1, request_block(b"run%2Fx.sock")),
            (3, request_block(b"localhost:1")),
            (5, vec![0x82, 0x86, 0x84, 0xbf]),
        ];
        let out = run(&connection(&blocks), 7).unwrap();
        let fr = frames(&out);
        let headers: Vec<&Vec<u8>> = fr.iter().filter(|f| f.0 == HEADERS).map(|f| &f.3).collect();
        assert!(headers.iter().zip(&blocks).all(|(h, b)| *h != &b.1), "re-encoded");
        let lists = header_lists(&fr);
        let got: Vec<&str> = lists.iter().map(|l| authority(l)).collect();
        assert_eq!(got, ["localhost", "localhost:1", "localhost"]);
    }

    #[test]
    fn padding_priority_and_continuations() {
        let block = request_block(b"tmp%2Fx.sock");
        let (a, b) = block.split_at(3);
        let mut input = PREFACE.to_vec();
        // PADDED | PRIORITY HEADERS carrying the first bytes, END_STREAM, then a CONTINUATION.
        let mut payload = vec![2];
        payload.extend_from_slice(&[0x80, 0, 0, 3, 15]);
        payload.extend_from_slice(a);
        payload.extend_from_slice(&[0, 0]);
        input.extend(frame_bytes(HEADERS, PADDED | PRIORITY | END_STREAM, 1, &payload));
        input.extend(frame_bytes(CONTINUATION, END_HEADERS, 1, b));
        let out = run(&input, 5).unwrap();
        let fr = frames(&out);
        assert_eq!(fr.len(), 1);
        assert_eq!(fr[0].1, PRIORITY | END_STREAM | END_HEADERS);
        assert_eq!(&fr[0].3[..5], &[0x80, 0, 0, 3, 15]);
        assert_eq!(authority(&header_lists(&fr)[0]), "localhost");
    }

    #[test]
    fn a_block_sent_in_continuations_reaches_hyper_in_one_frame() {
        let mut block = request_block(b"x%2Fy");
        for i in 0..40 {
            let mut field = vec![0x00];
            string(format!("x-field-{i}").as_bytes(), &mut field);
            string(&[b'v'; 300], &mut field);
            block.extend(field);
        }
        let (a, rest) = block.split_at(4000);
        let (b, c) = rest.split_at(4000);
        let mut input = PREFACE.to_vec();
        input.extend(frame_bytes(HEADERS, 0, 1, a));
        input.extend(frame_bytes(CONTINUATION, 0, 1, b));
        input.extend(frame_bytes(CONTINUATION, END_HEADERS, 1, c));
        let out = run(&input, 4096).unwrap();
        let fr = frames(&out);
        assert_eq!(fr.len(), 1);
        assert_eq!(fr[0].1, END_HEADERS);
        let lists = header_lists(&fr);
        assert_eq!(lists[0].len(), 44);
        assert_eq!(authority(&lists[0]), "localhost");
        assert_eq!(lists[0][43], ("x-field-39".into(), "v".repeat(300)));
    }

    #[test]
    fn a_long_block_is_cut_into_continuations() {
        let mut encoded = Vec::new();
        for i in 0..100 {
            literal(format!("x-field-{i}").as_bytes(), &[b'v'; 400], &mut encoded);
        }
        let pending = Pending { stream: 7, end_stream: true, priority: Some([0, 0, 0, 3, 9]) };
        let mut out = PREFACE.to_vec();
        emit(&pending, &encoded, &mut out);
        let fr = frames(&out);
        let kinds: Vec<u8> = fr.iter().map(|f| f.0).collect();
        assert_eq!(kinds, [HEADERS, CONTINUATION, CONTINUATION]);
        assert_eq!(fr[0].1, END_STREAM | PRIORITY);
        assert_eq!((fr[1].1, fr[2].1), (0, END_HEADERS));
        assert!(fr.iter().all(|f| f.2 == 7));
        assert_eq!(fr[0].3.len(), MAX_FRAME);
        let lists = header_lists(&fr);
        assert_eq!(lists[0].len(), 100);
        assert_eq!(lists[0][99], ("x-field-99".into(), "v".repeat(400)));
    }

    /// A block of the request fields, then `refs` references to one 3 KB field added to the dynamic table.
    fn bomb(refs: usize) -> Vec<u8> {
        let mut block = request_block(b"run%2Fx.sock");
        let mut entry = vec![0x40];
        string(b"x-big", &mut entry);
        string(&[b'b'; 3000], &mut entry);
        block.extend(entry);
        block.extend(std::iter::repeat_n(0xbe, refs));
        block
    }

    #[test]
    fn an_oversized_header_list_reaches_hyper_small_but_still_oversized() {
        let out = run(&connection(&[(1, bomb(15)), (3, vec![0x82, 0x86, 0x84, 0xbf])]), 1 << 20).unwrap();
        let fr = frames(&out);
        assert_eq!(fr.iter().filter(|f| f.0 == CONTINUATION).count(), 0);
        let lists = header_lists(&fr);
        let size: usize = lists[0].iter().map(|(n, v)| n.len() + v.len() + 32).sum();
        // The pseudo-headers and the filler.
        assert!((HYPER_LIST..HYPER_LIST + FILLER_SIZE + 256).contains(&size), "{size}");
        let names: Vec<&str> = lists[0].iter().map(|(n, _)| n.as_str()).take(5).collect();
        assert_eq!(names, [":method", ":scheme", ":path", ":authority", "accept-encoding"]);
        assert_eq!(authority(&lists[0]), "localhost");
        // The HPACK state is the client's all the same: 63 is still the authority.
        assert_eq!(authority(&lists[1]), "localhost");
    }

    #[test]
    fn a_header_list_past_the_abuse_limit_closes_the_connection() {
        assert!(run(&connection(&[(1, bomb(20))]), 1 << 20).is_ok());
        assert!(run(&connection(&[(1, bomb(22))]), 1 << 20).is_err());
    }

    #[test]
    fn protocol_errors_close_the_connection() {
        // A header block interrupted by another frame.
        let mut input = PREFACE.to_vec();
        input.extend(frame_bytes(HEADERS, 0, 1, &[0x82]));
        input.extend(frame_bytes(0x0, 0, 1, b"x"));
        assert!(run(&input, 100).is_err());
        // A header frame larger than SETTINGS_MAX_FRAME_SIZE.
        let mut input = PREFACE.to_vec();
        input.extend(frame_bytes(HEADERS, END_HEADERS, 1, &vec![0; MAX_FRAME + 1]));
        assert!(run(&input, 100).is_err());
        // A header block larger than h2 itself would take.
        let mut input = PREFACE.to_vec();
        input.extend(frame_bytes(HEADERS, 0, 1, &vec![0x82; MAX_FRAME]));
        for _ in 0..5 {
            input.extend(frame_bytes(CONTINUATION, 0, 1, &vec![0x82; MAX_FRAME]));
        }
        assert!(run(&input, 100_000).is_ok());
        input.extend(frame_bytes(CONTINUATION, END_HEADERS, 1, &[0x82]));
        assert!(run(&input, 100_000).is_err());
        // Padding longer than the frame.
        let mut input = PREFACE.to_vec();
        input.extend(frame_bytes(HEADERS, END_HEADERS | PADDED, 1, &[9, 0x82]));
        assert!(run(&input, 100).is_err());
        // A table size update over SETTINGS_HEADER_TABLE_SIZE, and a reference past the table.
        for bad in [vec![0x3f, 0xe1, 0x7f], vec![0xff, 0x10]] {
            let input = connection(&[(1, bad)]);
            assert!(run(&input, 100).is_err());
        }
    }

    #[test]
    fn without_the_preface_everything_passes_unchanged() {
        let mut input = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        input.extend(frame_bytes(HEADERS, END_HEADERS, 1, &request_block(b"a%2Fb")));
        assert_eq!(run(&input, 3).unwrap(), input);
    }
}
