//! The launcher at `/usr/local/bin/tailrouter` in the compressed image.
//!
//! It maps its own file, inflates the real binary from the xz stream at its end into a sealed
//! memfd, and executes that with the same argv and environment, so `tailscale`,
//! `tailscaled`, `containerboot` and `sh` dispatch by argv[0] as before. It holds nothing
//! after the exec: the process image is then the real binary's.
//!
//! On failure it prints one line to stderr and exits 127, like a shell that cannot run a
//! program.
#![no_std]
#![no_main]

use core::ffi::{c_char, c_int};
use core::ptr;
use tailrouter_unpack::{trailer, unpack, Error};

// Without std nothing else links the C library, which gives the system calls (musl, static).
#[link(name = "c")]
extern "C" {}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    // Nothing here should panic (the decoder returns errors); if it does, say so and stop.
    fail("tailrouter-unpack: internal error", 0)
}

fn write_all(mut b: &[u8]) {
    while !b.is_empty() {
        // SAFETY: b is a valid slice for the length given.
        let n = unsafe { libc::write(2, b.as_ptr().cast(), b.len()) };
        if n <= 0 {
            return;
        }
        b = &b[n as usize..];
    }
}

/// Prints `msg` (and errno when not 0) and exits 127.
fn fail(msg: &str, errno: c_int) -> ! {
    write_all(msg.as_bytes());
    if errno != 0 {
        let mut buf = [0u8; 24];
        let mut i = buf.len();
        let mut v = errno.unsigned_abs();
        loop {
            i -= 1;
            buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        write_all(b" (errno ");
        write_all(&buf[i..]);
        write_all(b")");
    }
    write_all(b"\n");
    // SAFETY: ends the process; nothing is left to clean up.
    unsafe { libc::_exit(127) }
}

fn errno() -> c_int {
    // SAFETY: musl's errno location is always valid for the calling thread.
    unsafe { *libc::__errno_location() }
}

fn fail_errno(msg: &str) -> ! {
    fail(msg, errno())
}

/// An anonymous or file mapping of `len` bytes.
///
/// # Safety
/// `fd` must be -1 with `MAP_ANONYMOUS` in `flags`, or an open file at least `len` long.
unsafe fn map(len: usize, prot: c_int, flags: c_int, fd: c_int, what: &str) -> *mut u8 {
    let p = libc::mmap(ptr::null_mut(), len, prot, flags, fd, 0);
    if p == libc::MAP_FAILED {
        fail_errno(what);
    }
    p.cast()
}

/// The C entry point, called by musl's start code.
///
/// # Safety
/// `argv` and `envp` are the null-terminated arrays the kernel gave this process.
#[no_mangle]
pub unsafe extern "C" fn main(
    _argc: c_int,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    // SAFETY: each call below gets valid pointers and lengths: the mappings are made here with
    // the sizes used, and argv/envp are the ones the kernel gave this process.
    unsafe {
        let mut fd = libc::open(c"/proc/self/exe".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            // No /proc (a bare chroot): the path this program was executed by, as the kernel
            // recorded it, names the same file.
            let execfn = libc::getauxval(libc::AT_EXECFN) as *const c_char;
            if !execfn.is_null() {
                fd = libc::open(execfn, libc::O_RDONLY | libc::O_CLOEXEC);
            }
        }
        if fd < 0 {
            fail_errno("tailrouter-unpack: cannot open its own file (/proc/self/exe, or the path it was run by)");
        }
        let mut st: libc::stat = core::mem::zeroed();
        if libc::fstat(fd, &mut st) != 0 {
            fail_errno("tailrouter-unpack: cannot stat /proc/self/exe");
        }
        let file_len = st.st_size as usize;
        if file_len == 0 {
            fail(Error::NoTrailer.message(), 0);
        }
        let file = map(
            file_len,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            fd,
            "tailrouter-unpack: cannot map its own file",
        );
        let file = core::slice::from_raw_parts(file, file_len);
        let t = match trailer(file) {
            Ok(t) => t,
            Err(e) => fail(e.message(), 0),
        };
        let mfd = libc::memfd_create(
            c"tailrouter".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        );
        if mfd < 0 {
            fail_errno("tailrouter-unpack: memfd_create failed (kernel 3.17 or later is needed; or use the uncompressed image)");
        }
        if libc::ftruncate(mfd, t.out_len as libc::off_t) != 0 {
            fail_errno("tailrouter-unpack: cannot size the memfd (out of memory?)");
        }
        let out = map(
            t.out_len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            mfd,
            "tailrouter-unpack: cannot map the memfd",
        );
        let dict = map(
            t.dict_len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            "tailrouter-unpack: cannot map the dictionary (out of memory?)",
        );
        let payload = &file[t.payload_start..t.payload_start + t.payload_len];
        let r = unpack(
            payload,
            core::slice::from_raw_parts_mut(dict, t.dict_len),
            core::slice::from_raw_parts_mut(out, t.out_len),
        );
        if let Err(e) = r {
            fail(e.message(), 0);
        }
        libc::munmap(dict.cast(), t.dict_len);
        libc::munmap(out.cast(), t.out_len);
        libc::munmap(file.as_ptr() as *mut libc::c_void, file_len);
        libc::close(fd);
        // Sealed, the running binary cannot be changed through the memfd by anyone holding
        // it. A kernel without seals still runs it.
        libc::fcntl(
            mfd,
            libc::F_ADD_SEALS,
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL,
        );
        libc::syscall(
            libc::SYS_execveat,
            mfd,
            c"".as_ptr(),
            argv,
            envp,
            libc::AT_EMPTY_PATH,
        );
        // Kernels before 3.19 lack execveat; the /proc path does the same.
        let mut path = *b"/proc/self/fd/0000000000\0";
        let mut digits = [0u8; 10];
        let (mut n, mut v) = (0, mfd as u32);
        loop {
            digits[n] = b'0' + (v % 10) as u8;
            n += 1;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        for i in 0..n {
            path[14 + i] = digits[n - 1 - i];
        }
        path[14 + n] = 0;
        libc::execve(path.as_ptr().cast(), argv, envp);
        fail_errno("tailrouter-unpack: cannot execute the unpacked binary")
    }
}
