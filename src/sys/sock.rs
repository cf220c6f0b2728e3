//! Unix socket calls beyond what tokio offers: passing one file descriptor with `SCM_RIGHTS`, and the peer's
//! supplementary groups (`SO_PEERGROUPS`). The descriptors are borrowed; nothing here blocks (every call is
//! `MSG_DONTWAIT`, for sockets a runtime polls).
#![allow(unsafe_code)]

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr};

/// What [`recv_with_fds`] read: the byte count and every descriptor that came with those bytes (owned: they
/// are closed on drop unless taken).
#[derive(Debug)]
pub struct Received {
    pub bytes: usize,
    pub fds: Vec<OwnedFd>,
}

/// `sendmsg(sock, buf, SCM_RIGHTS [fd], MSG_DONTWAIT|MSG_NOSIGNAL)`: sends the first bytes of a stream with
/// `fd` attached (a stream socket carries descriptors only with at least one byte of data).
pub fn send_with_fd(sock: impl AsFd, buf: &[u8], fd: impl AsFd) -> std::io::Result<usize> {
    let raw = [fd.as_fd().as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&raw)];
    sendmsg::<UnixAddr>(
        sock.as_fd().as_raw_fd(),
        &[IoSlice::new(buf)],
        &cmsg,
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(std::io::Error::from)
}

/// Most descriptors one `SCM_RIGHTS` message may carry (the kernel's `SCM_MAX_FD`). The control buffer holds
/// that many, so the kernel never truncates it: a truncated buffer would leave descriptors installed in this
/// process that nobody could name or close.
const SCM_MAX_FD: usize = 253;

/// `recvmsg(sock, buf, MSG_DONTWAIT|MSG_CMSG_CLOEXEC)` with room for `SCM_RIGHTS`: the bytes read and the
/// descriptors that came with them.
pub fn recv_with_fds(sock: impl AsFd, buf: &mut [u8]) -> std::io::Result<Received> {
    let mut space = nix::cmsg_space!([RawFd; SCM_MAX_FD]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<UnixAddr>(
        sock.as_fd().as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(std::io::Error::from)?;
    let mut fds = Vec::new();
    let cmsgs = msg.cmsgs().map_err(std::io::Error::from)?;
    for c in cmsgs {
        if let ControlMessageOwned::ScmRights(raw) = c {
            for fd in raw {
                // SAFETY: the kernel has just installed `fd` in this process for this message; nothing else
                // knows its number, so ownership is taken exactly once here.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Ok(Received { bytes: msg.bytes, fds })
}

/// The supplementary groups of the process that connected `sock` (`SO_PEERGROUPS`, as of `connect`).
pub fn peer_groups(sock: impl AsFd) -> std::io::Result<Vec<u32>> {
    let raw = sock.as_fd().as_raw_fd();
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: `groups` is a valid, writable buffer of `len` bytes for the duration of the call, and `len`
        // is a valid pointer to its size; the kernel writes at most `len` bytes and updates `len`.
        let r = unsafe {
            libc::getsockopt(raw, libc::SOL_SOCKET, libc::SO_PEERGROUPS, groups.as_mut_ptr().cast(), &mut len)
        };
        let n = len as usize / std::mem::size_of::<libc::gid_t>();
        if r == 0 {
            groups.truncate(n);
            return Ok(groups);
        }
        match Errno::last() {
            // The kernel says how much room it needs; NGROUPS_MAX is 65536.
            Errno::ERANGE if n > groups.len() && n <= 65_536 => groups.resize(n, 0),
            e => return Err(std::io::Error::from(e)),
        }
    }
}
