//! The write buffer of a stream transport.
//!
//! Chunks are kept as given (for the PyO3 layer: the bytes objects passed to `write`, without a
//! copy), with the offset already sent of the first one, and the number of bytes not yet sent
//! (`get_write_buffer_size`). `write_to` hands as many chunks as one call takes (at most
//! [`IOV_MAX`]) to one `writev`, then drops what the kernel took. Empty chunks are never stored:
//! the buffer is empty exactly when its size is 0.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;

/// The most chunks handed to one `writev` (Linux's `IOV_MAX`).
pub const IOV_MAX: usize = 1024;

/// Bytes waiting to be written, in order.
#[derive(Debug)]
pub struct WriteQueue<B> {
    chunks: VecDeque<B>,
    /// Bytes of `chunks[0]` already written.
    head_sent: usize,
    /// Bytes not yet written, over all chunks.
    size: usize,
}

impl<B> Default for WriteQueue<B> {
    fn default() -> Self {
        WriteQueue {
            chunks: VecDeque::new(),
            head_sent: 0,
            size: 0,
        }
    }
}

impl<B: AsRef<[u8]>> WriteQueue<B> {
    pub const fn new() -> Self {
        WriteQueue {
            chunks: VecDeque::new(),
            head_sent: 0,
            size: 0,
        }
    }

    /// Bytes not yet written.
    #[inline]
    pub fn size(&self) -> usize {
        self.size
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// Chunks held (the first may be partly written).
    pub fn chunks(&self) -> usize {
        self.chunks.len()
    }

    /// Append `chunk` after everything buffered; an empty chunk is dropped.
    pub fn push(&mut self, chunk: B) {
        let n = chunk.as_ref().len();
        if n > 0 {
            self.size += n;
            self.chunks.push_back(chunk);
        }
    }

    /// Append `chunk` of which the first `sent` bytes were already written (the rest of a
    /// partial send made before anything was buffered). The queue must be empty.
    pub fn push_rest(&mut self, chunk: B, sent: usize) {
        debug_assert!(self.is_empty());
        let n = chunk.as_ref().len();
        if sent < n {
            self.size = n - sent;
            self.head_sent = sent;
            self.chunks.push_back(chunk);
        }
    }

    /// Drop everything (a fatal error or `abort`); returns the chunks so the caller can release
    /// them where it chooses (Python objects must not be freed while state is borrowed).
    pub fn take(&mut self) -> VecDeque<B> {
        self.head_sent = 0;
        self.size = 0;
        std::mem::take(&mut self.chunks)
    }

    /// The unsent bytes as `iovec`s, at most `out.len()`; returns how many were filled.
    pub fn iovecs(&self, out: &mut [libc::iovec]) -> usize {
        let mut n = 0;
        for (i, chunk) in self.chunks.iter().enumerate() {
            if n == out.len() {
                break;
            }
            let bytes = chunk.as_ref();
            let bytes = if i == 0 {
                &bytes[self.head_sent..]
            } else {
                bytes
            };
            out[n] = libc::iovec {
                iov_base: bytes.as_ptr() as *mut libc::c_void,
                iov_len: bytes.len(),
            };
            n += 1;
        }
        n
    }

    /// Mark `n` bytes (at most `size()`) as written, dropping the chunks that are done; the
    /// dropped chunks are pushed to `done` for the caller to release.
    pub fn consume(&mut self, mut n: usize, done: &mut Vec<B>) {
        debug_assert!(n <= self.size);
        n = n.min(self.size);
        self.size -= n;
        while n > 0 {
            let left = self.chunks[0].as_ref().len() - self.head_sent;
            if n >= left {
                n -= left;
                self.head_sent = 0;
                if let Some(c) = self.chunks.pop_front() {
                    done.push(c);
                }
            } else {
                self.head_sent += n;
                n = 0;
            }
        }
    }

    /// One `writev` of the buffered bytes (up to [`IOV_MAX`] chunks) to `fd`: the byte count
    /// written (and consumed). `WouldBlock`/`Interrupted` errors are returned as they are.
    pub fn write_to(&mut self, fd: RawFd, done: &mut Vec<B>) -> io::Result<usize> {
        if self.is_empty() {
            return Ok(0);
        }
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; 64];
        let mut big;
        let iovs: &mut [libc::iovec] = if self.chunks.len() <= iov.len() {
            &mut iov
        } else {
            big = vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                self.chunks.len().min(IOV_MAX)
            ];
            &mut big
        };
        let count = self.iovecs(iovs);
        // SAFETY: the first `count` iovecs describe live, readable slices of chunks owned by
        // this queue, which is not modified until writev returns; writev only reads them.
        let n = unsafe {
            if count == 1 {
                libc::send(fd, iovs[0].iov_base, iovs[0].iov_len, libc::MSG_NOSIGNAL)
            } else {
                libc::writev(fd, iovs.as_ptr(), count as libc::c_int)
            }
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        self.consume(n, done);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    fn q(chunks: &[&[u8]]) -> WriteQueue<Vec<u8>> {
        let mut q = WriteQueue::new();
        for c in chunks {
            q.push(c.to_vec());
        }
        q
    }

    #[test]
    fn size_counts_unsent_bytes_and_skips_empty_chunks() {
        let mut q = q(&[b"abc", b"", b"de"]);
        assert_eq!(q.size(), 5);
        assert_eq!(q.chunks(), 2);
        let mut done = Vec::new();
        q.consume(2, &mut done);
        assert_eq!(q.size(), 3);
        assert!(done.is_empty());
        q.consume(1, &mut done);
        assert_eq!(done, vec![b"abc".to_vec()]);
        assert_eq!(q.size(), 2);
        q.consume(2, &mut done);
        assert!(q.is_empty());
        assert_eq!(q.chunks(), 0);
    }

    #[test]
    fn iovecs_start_inside_a_partly_sent_chunk() {
        let mut q = WriteQueue::new();
        q.push_rest(b"hello".to_vec(), 2);
        q.push(b"world".to_vec());
        assert_eq!(q.size(), 8);
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; 4];
        assert_eq!(q.iovecs(&mut iov), 2);
        assert_eq!(iov[0].iov_len, 3);
        assert_eq!(iov[1].iov_len, 5);
        // A limit on the number of iovecs.
        assert_eq!(q.iovecs(&mut iov[..1]), 1);
    }

    #[test]
    fn push_rest_of_a_fully_sent_chunk_keeps_nothing() {
        let mut q = WriteQueue::new();
        q.push_rest(b"abc".to_vec(), 3);
        assert!(q.is_empty());
        assert_eq!(q.chunks(), 0);
    }

    #[test]
    fn take_empties() {
        let mut q = q(&[b"a", b"b"]);
        let taken = q.take();
        assert_eq!(taken.len(), 2);
        assert!(q.is_empty());
    }

    #[test]
    fn writev_sends_in_order_and_resumes_after_partial_writes() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut expect = Vec::new();
        let mut q = WriteQueue::new();
        for i in 0..200u32 {
            let chunk: Vec<u8> = (0..(i * 37 % 5000 + 1)).map(|j| (i + j) as u8).collect();
            expect.extend_from_slice(&chunk);
            q.push(chunk);
        }
        let total = q.size();
        let mut got = Vec::new();
        let mut done = Vec::new();
        let mut buf = vec![0u8; 65536];
        while !q.is_empty() {
            match q.write_to(a.as_raw_fd(), &mut done) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let n = b.read(&mut buf).unwrap();
                    got.extend_from_slice(&buf[..n]);
                }
                Err(e) => panic!("{e}"),
            }
        }
        drop(a);
        b.read_to_end(&mut got).unwrap();
        assert_eq!(got.len(), total);
        assert!(got == expect);
        assert_eq!(done.len(), 200);
    }

    #[test]
    fn more_chunks_than_iov_max_take_several_calls() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut q = WriteQueue::new();
        for i in 0..(IOV_MAX + 10) {
            q.push(vec![i as u8]);
        }
        let mut done = Vec::new();
        let first = q.write_to(a.as_raw_fd(), &mut done).unwrap();
        assert_eq!(first, IOV_MAX);
        assert_eq!(q.size(), 10);
        assert_eq!(q.write_to(a.as_raw_fd(), &mut done).unwrap(), 10);
        drop(a);
        let mut got = Vec::new();
        b.read_to_end(&mut got).unwrap();
        assert_eq!(got.len(), IOV_MAX + 10);
        assert_eq!(got[IOV_MAX + 9], (IOV_MAX + 9) as u8);
    }

    #[test]
    fn errors_leave_the_buffer_untouched() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        let mut q = q(&[b"abc"]);
        let mut done = Vec::new();
        let e = q.write_to(a.as_raw_fd(), &mut done).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPIPE));
        assert_eq!(q.size(), 3);
    }
}
