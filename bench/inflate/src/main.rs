//! `kiln-inflate-bench FILE [RUNS]`: inflates FILE (a gzip blob, multi-member allowed) RUNS times with each
//! backend in turn (alternating), streaming with bounded memory: 256 KiB of input read from a file, 256 KiB of
//! output overwritten each step (kiln's CHUNK). Prints per-backend medians and min–max, MB/s of output, and the
//! output's SHA-256 so a wrong backend shows. Also times SHA-256 over the output alone (the DiffID's cost).
use std::ffi::c_int;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::time::Instant;

use sha2::{Digest, Sha256};

const CHUNK: usize = 256 << 10;

fn zlib_rs(path: &str, out: &mut [u8], sink: &mut dyn FnMut(&[u8])) -> u64 {
    let f = BufReader::with_capacity(CHUNK, File::open(path).unwrap());
    let mut d = flate2::bufread::MultiGzDecoder::new(f);
    let mut total = 0u64;
    loop {
        let n = d.read(out).unwrap();
        if n == 0 {
            return total;
        }
        sink(&out[..n]);
        total += n as u64;
    }
}

fn zlib_ng(path: &str, out: &mut [u8], sink: &mut dyn FnMut(&[u8])) -> u64 {
    use libz_ng_sys as z;
    let mut f = BufReader::with_capacity(CHUNK, File::open(path).unwrap());
    // z_stream's allocator fields are non-nullable fn pointers in Rust; zlib wants them NULL (its default):
    // the struct is only ever touched through a raw pointer.
    let mut mem = Box::new(std::mem::MaybeUninit::<z::z_stream>::zeroed());
    let s = mem.as_mut_ptr();
    // windowBits 15 + 32: gzip or zlib wrapper, detected; members are restarted below.
    let r = unsafe { z::inflateInit2_(s, 15 + 32, z::zlibVersion(), std::mem::size_of::<z::z_stream>() as c_int) };
    assert_eq!(r, z::Z_OK);
    let mut total = 0u64;
    loop {
        let input = f.fill_buf().unwrap();
        if input.is_empty() {
            break;
        }
        let (used, made, r) = unsafe {
            (*s).next_in = input.as_ptr() as *mut u8;
            (*s).avail_in = input.len() as u32;
            (*s).next_out = out.as_mut_ptr();
            (*s).avail_out = out.len() as u32;
            let r = z::inflate(s, z::Z_NO_FLUSH);
            (input.len() - (*s).avail_in as usize, out.len() - (*s).avail_out as usize, r)
        };
        assert!(r == z::Z_OK || r == z::Z_STREAM_END || r == z::Z_BUF_ERROR, "zlib-ng: {r}");
        f.consume(used);
        sink(&out[..made]);
        total += made as u64;
        if r == z::Z_STREAM_END {
            unsafe { z::inflateReset(s) };
        }
    }
    unsafe { z::inflateEnd(s) };
    total
}

#[repr(C)]
struct IsalState {
    _opaque: [u8; 0],
}
extern "C" {
    fn kiln_isal_new() -> *mut IsalState;
    fn kiln_isal_free(s: *mut IsalState);
    fn kiln_isal_reset(s: *mut IsalState);
    fn kiln_isal_inflate(
        s: *mut IsalState,
        input: *const u8,
        in_len: u32,
        out: *mut u8,
        out_len: u32,
        in_used: *mut u32,
        out_made: *mut u32,
        done: *mut c_int,
    ) -> c_int;
}

fn isal(path: &str, out: &mut [u8], sink: &mut dyn FnMut(&[u8])) -> u64 {
    let mut f = BufReader::with_capacity(CHUNK, File::open(path).unwrap());
    let s = unsafe { kiln_isal_new() };
    assert!(!s.is_null());
    let mut total = 0u64;
    loop {
        let input = f.fill_buf().unwrap();
        if input.is_empty() {
            break;
        }
        let (mut used, mut made, mut done) = (0u32, 0u32, 0 as c_int);
        let r = unsafe {
            kiln_isal_inflate(s, input.as_ptr(), input.len() as u32, out.as_mut_ptr(), out.len() as u32, &mut used, &mut made, &mut done)
        };
        assert!(r >= 0, "isal: {r}");
        f.consume(used as usize);
        sink(&out[..made as usize]);
        total += made as u64;
        if done != 0 {
            unsafe { kiln_isal_reset(s) };
        }
    }
    unsafe { kiln_isal_free(s) };
    total
}

type Backend = fn(&str, &mut [u8], &mut dyn FnMut(&[u8])) -> u64;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).expect("usage: kiln-inflate-bench FILE [RUNS]").clone();
    let runs: usize = args.get(2).map(|r| r.parse().unwrap()).unwrap_or(5);
    let backends: [(&str, Backend); 3] = [("zlib-rs", zlib_rs), ("zlib-ng", zlib_ng), ("isa-l", isal)];
    let mut out = vec![0u8; CHUNK];
    let mut times = vec![Vec::new(); backends.len()];
    let mut hash_times = Vec::new();
    let mut size = 0u64;
    // Check once that all three give the same bytes.
    let mut digests = Vec::new();
    for (name, b) in &backends {
        let mut h = Sha256::new();
        let t = Instant::now();
        size = b(&path, &mut out, &mut |c| h.update(c));
        hash_times.push(t.elapsed().as_secs_f64());
        digests.push((name, h.finalize().iter().map(|b| format!("{b:02x}")).collect::<String>()));
    }
    for (name, d) in &digests {
        println!("{name:8} sha256 of output {d}");
    }
    assert!(digests.windows(2).all(|w| w[0].1 == w[1].1), "backends disagree");
    let mut sha_alone = Vec::new();
    for _ in 0..runs {
        for (i, (_, b)) in backends.iter().enumerate() {
            let t = Instant::now();
            b(&path, &mut out, &mut |_| {});
            times[i].push(t.elapsed().as_secs_f64());
        }
        // SHA-256 over the same number of bytes, from memory (what hashing the DiffID costs on its own).
        let t = Instant::now();
        let mut h = Sha256::new();
        let mut left = size;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            h.update(&out[..n]);
            left -= n as u64;
        }
        std::hint::black_box(h.finalize());
        sha_alone.push(t.elapsed().as_secs_f64());
    }
    let in_size = std::fs::metadata(&path).unwrap().len();
    println!("input {in_size} bytes, output {size} bytes, {runs} runs, alternating");
    println!("{:10} {:>10} {:>10} {:>10} {:>10}", "backend", "median s", "min s", "max s", "MB/s out");
    for (i, (name, _)) in backends.iter().enumerate() {
        let (mn, mx) = (times[i].iter().cloned().fold(f64::MAX, f64::min), times[i].iter().cloned().fold(0.0, f64::max));
        let m = median(&mut times[i]);
        println!("{name:10} {m:10.3} {mn:10.3} {mx:10.3} {:10.0}", size as f64 / m / 1e6);
    }
    let m = median(&mut sha_alone);
    println!("{:10} {m:10.3} {:>10} {:>10} {:10.0}", "sha2", "", "", size as f64 / m / 1e6);
    let mut ring_alone = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let mut h = ring::digest::Context::new(&ring::digest::SHA256);
        let mut left = size;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            h.update(&out[..n]);
            left -= n as u64;
        }
        std::hint::black_box(h.finish());
        ring_alone.push(t.elapsed().as_secs_f64());
    }
    let m = median(&mut ring_alone);
    println!("{:10} {m:10.3} {:>10} {:>10} {:10.0}", "ring", "", "", size as f64 / m / 1e6);
}
