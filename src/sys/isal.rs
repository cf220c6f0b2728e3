//! ISA-L's igzip inflate (Intel's Intelligent Storage Acceleration Library, Debian's `libisal-dev`), through
//! kiln's C shim `isal.c`, which build.rs compiles against the installed header only when the library is
//! there (`cfg(kiln_isal)`). Chosen by measurement (bench/inflate.sh, bench/RESULTS.md): on this project's
//! machines it inflates layers 1.2–1.3× faster than zlib-rs.
//!
//! [`Member`] decodes one gzip member per [`Member::reset`]; the gzip wrapper (header, CRC-32, ISIZE) is checked
//! by ISA-L. The multi-member loop, the caps and what an error means are the layer pipeline's
//! (`layer::stream`), in safe code.

use std::ffi::c_int;
use std::ptr::NonNull;

/// ISA-L's `struct inflate_state`, only ever handled by pointer.
#[repr(C)]
struct State {
    _opaque: [u8; 0],
}

extern "C" {
    fn kiln_isal_new() -> *mut State;
    fn kiln_isal_free(s: *mut State);
    fn kiln_isal_reset(s: *mut State);
    fn kiln_isal_inflate(
        s: *mut State,
        input: *const u8,
        in_len: u32,
        out: *mut u8,
        out_len: u32,
        in_used: *mut u32,
        out_made: *mut u32,
        done: *mut c_int,
    ) -> c_int;
}

/// What one [`Member::inflate`] call did.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    /// Input bytes taken (the rest is for the next call, or after the member's end).
    pub consumed: usize,
    /// Output bytes written at the start of `out`.
    pub produced: usize,
    /// The member's trailer was read and its CRC-32 and size matched.
    pub finished: bool,
}

/// An ISA-L error code (`ISAL_INVALID_BLOCK` …), named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}", describe(*.0))]
pub struct InflateError(pub i32);

fn describe(code: i32) -> &'static str {
    match code {
        -1 => "invalid deflate block",
        -2 => "invalid deflate symbol",
        -3 => "invalid lookback distance",
        -4 => "invalid gzip header",
        -5 => "unsupported compression method in the gzip header",
        -6 => "gzip trailer mismatch (CRC-32 or size)",
        _ => "inflate failed",
    }
}

/// One ISA-L inflate state (about 40 KiB, allocated by the shim).
pub struct Member {
    state: NonNull<State>,
}

// The state is owned and used by one thread at a time.
unsafe impl Send for Member {}

impl Member {
    /// A decoder for a gzip member, or None when the allocation failed.
    pub fn new() -> Option<Member> {
        // SAFETY: the shim allocates and initialises the state, or returns NULL.
        NonNull::new(unsafe { kiln_isal_new() }).map(|state| Member { state })
    }

    /// Starts the next member.
    pub fn reset(&mut self) {
        // SAFETY: `state` is live and exclusively ours.
        unsafe { kiln_isal_reset(self.state.as_ptr()) }
    }

    /// Inflates from `input` into `out`. Slices over 4 GiB are used in part (the step says how much).
    pub fn inflate(&mut self, input: &[u8], out: &mut [u8]) -> Result<Step, InflateError> {
        let in_len = u32::try_from(input.len()).unwrap_or(u32::MAX);
        let out_len = u32::try_from(out.len()).unwrap_or(u32::MAX);
        let (mut used, mut made, mut done) = (0u32, 0u32, 0 as c_int);
        // SAFETY: the pointers and lengths describe live slices (lengths clamped to them); ISA-L reads at most
        // `in_len` bytes and writes at most `out_len`, and keeps no pointer into them past the call (the shim
        // sets both on every call).
        let r = unsafe {
            kiln_isal_inflate(
                self.state.as_ptr(),
                input.as_ptr(),
                in_len,
                out.as_mut_ptr(),
                out_len,
                &mut used,
                &mut made,
                &mut done,
            )
        };
        if r < 0 {
            return Err(InflateError(r));
        }
        Ok(Step {
            consumed: (used as usize).min(input.len()),
            produced: (made as usize).min(out.len()),
            finished: done != 0,
        })
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        // SAFETY: allocated by kiln_isal_new, freed once.
        unsafe { kiln_isal_free(self.state.as_ptr()) }
    }
}
