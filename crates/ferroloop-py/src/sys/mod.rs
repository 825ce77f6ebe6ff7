//! Raw access to code outside the crate that is neither CPython's API nor the OS: today the
//! OpenSSL under CPython's `_ssl` module.
//!
//! # Contract
//! - A leaf: depends on nothing else in the crate; `transports/` uses it.
//! - Everything found at run time (symbols, struct layouts) is checked before its first use,
//!   and a failed check disables the feature instead of guessing.
//!
//! | file | what |
//! |---|---|
//! | `openssl.rs` | `Direct`: `SSL_read_ex`, `SSL_write_ex`, `SSL_pending` and the memory-BIO calls on the `SSL *` and `BIO *` of `_ssl`'s own objects, for the per-record success path of TLS |

pub(crate) mod openssl;
