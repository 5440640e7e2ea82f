//! TFTP wire format (RFC 1350, with the option extension of RFC 2347): pure parse and encode.
//!
//! No I/O, no clock: the server and the fuzz target both call these functions.

use std::fmt;

/// Longest file name accepted in a request, in bytes.
pub const MAX_FILENAME_LEN: usize = 1024;
/// Longest option name or value accepted in a request, in bytes.
pub const MAX_OPTION_LEN: usize = 64;
/// Most options accepted in one request.
pub const MAX_OPTIONS: usize = 16;

const OP_RRQ: u16 = 1;
const OP_WRQ: u16 = 2;
const OP_DATA: u16 = 3;
const OP_ACK: u16 = 4;
const OP_ERROR: u16 = 5;
const OP_OACK: u16 = 6;

/// One TFTP packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// Read request.
    Rrq(Request),
    /// Write request (always refused by this server, but decoded to be refused properly).
    Wrq(Request),
    /// A block of file data.
    Data {
        /// Block number (wraps to 0 after 65535).
        block: u16,
        /// Payload, at most the negotiated block size.
        data: Vec<u8>,
    },
    /// Acknowledgement of a block (block 0 acknowledges an OACK).
    Ack {
        /// The block acknowledged.
        block: u16,
    },
    /// An error, which ends the transfer.
    Error {
        /// What went wrong.
        code: ErrorCode,
        /// Human-readable text.
        message: String,
    },
    /// Option acknowledgement (RFC 2347): the options the server accepted, with their values.
    Oack {
        /// Accepted options as `(name, value)`.
        options: Vec<(String, String)>,
    },
}

/// A read or write request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The file name as sent by the client.
    pub filename: String,
    /// The transfer mode.
    pub mode: Mode,
    /// Options in the order sent, as `(name, value)`; names keep the client's case.
    pub options: Vec<(String, String)>,
}

/// Transfer mode of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Text, with CR LF line ends on the wire.
    Netascii,
    /// Raw bytes.
    Octet,
    /// Obsolete mail mode (refused by the server).
    Mail,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Netascii => "netascii",
            Mode::Octet => "octet",
            Mode::Mail => "mail",
        }
    }
}

/// A TFTP error code (RFC 1350 section 5, RFC 2347 code 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    /// Not defined, see the message.
    pub const NOT_DEFINED: ErrorCode = ErrorCode(0);
    /// File not found.
    pub const FILE_NOT_FOUND: ErrorCode = ErrorCode(1);
    /// Access violation.
    pub const ACCESS_VIOLATION: ErrorCode = ErrorCode(2);
    /// Illegal TFTP operation.
    pub const ILLEGAL_OPERATION: ErrorCode = ErrorCode(4);
    /// Unknown transfer ID.
    pub const UNKNOWN_TID: ErrorCode = ErrorCode(5);
    /// Option negotiation failed (RFC 2347).
    pub const OPTION_NEGOTIATION: ErrorCode = ErrorCode(8);
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A datagram that is not a valid TFTP packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than its fixed part.
    #[error("packet of {len} bytes is too short for opcode {opcode}")]
    TooShort {
        /// Datagram length.
        len: usize,
        /// Opcode, 0 if even that was missing.
        opcode: u16,
    },
    /// Opcode outside 1..=6.
    #[error("unknown opcode {opcode}")]
    UnknownOpcode {
        /// The opcode found.
        opcode: u16,
    },
    /// A string field without its NUL terminator.
    #[error("unterminated {field}")]
    Unterminated {
        /// Which field.
        field: &'static str,
    },
    /// A string field that is not UTF-8 or is empty where text is required.
    #[error("invalid {field}")]
    InvalidText {
        /// Which field.
        field: &'static str,
    },
    /// A string field longer than allowed.
    #[error("{field} is {len} bytes, more than {max}")]
    TooLong {
        /// Which field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A mode other than netascii, octet or mail.
    #[error("unknown transfer mode `{mode}`")]
    UnknownMode {
        /// The mode found.
        mode: String,
    },
    /// More options than [`MAX_OPTIONS`].
    #[error("more than {max} options")]
    TooManyOptions {
        /// The limit.
        max: usize,
    },
    /// The same option twice (names compare case-insensitively).
    #[error("option `{name}` given twice")]
    DuplicateOption {
        /// The option name.
        name: String,
    },
    /// Bytes after the last field of a fixed-size packet or an error packet.
    #[error("{len} trailing bytes after opcode {opcode}")]
    Trailing {
        /// Opcode.
        opcode: u16,
        /// Number of extra bytes.
        len: usize,
    },
}

/// Reads a NUL-terminated string starting at `buf[0]`; returns it and the rest after the NUL.
fn take_str<'a>(
    buf: &'a [u8],
    field: &'static str,
    max: usize,
) -> Result<(&'a str, &'a [u8]), DecodeError> {
    let end = buf
        .iter()
        .position(|&b| b == 0)
        .ok_or(DecodeError::Unterminated { field })?;
    if end > max {
        return Err(DecodeError::TooLong {
            field,
            len: end,
            max,
        });
    }
    let s = std::str::from_utf8(&buf[..end]).map_err(|_| DecodeError::InvalidText { field })?;
    Ok((s, &buf[end + 1..]))
}

fn decode_request(body: &[u8]) -> Result<Request, DecodeError> {
    let (filename, rest) = take_str(body, "filename", MAX_FILENAME_LEN)?;
    if filename.is_empty() {
        return Err(DecodeError::InvalidText { field: "filename" });
    }
    let (mode, mut rest) = take_str(rest, "mode", MAX_OPTION_LEN)?;
    let mode = match mode.to_ascii_lowercase().as_str() {
        "netascii" => Mode::Netascii,
        "octet" => Mode::Octet,
        "mail" => Mode::Mail,
        _ => {
            return Err(DecodeError::UnknownMode {
                mode: mode.to_owned(),
            });
        }
    };
    let options = decode_options(&mut rest)?;
    Ok(Request {
        filename: filename.to_owned(),
        mode,
        options,
    })
}

fn decode_options(rest: &mut &[u8]) -> Result<Vec<(String, String)>, DecodeError> {
    let mut options: Vec<(String, String)> = Vec::new();
    while !rest.is_empty() {
        let (name, r) = take_str(rest, "option name", MAX_OPTION_LEN)?;
        let (value, r) = take_str(r, "option value", MAX_OPTION_LEN)?;
        *rest = r;
        if name.is_empty() {
            return Err(DecodeError::InvalidText {
                field: "option name",
            });
        }
        if options.len() == MAX_OPTIONS {
            return Err(DecodeError::TooManyOptions { max: MAX_OPTIONS });
        }
        if options.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
            return Err(DecodeError::DuplicateOption {
                name: name.to_owned(),
            });
        }
        options.push((name.to_owned(), value.to_owned()));
    }
    Ok(options)
}

fn block_of(opcode: u16, body: &[u8]) -> Result<u16, DecodeError> {
    match body {
        [a, b] => Ok(u16::from_be_bytes([*a, *b])),
        [_, _, extra @ ..] => Err(DecodeError::Trailing {
            opcode,
            len: extra.len(),
        }),
        _ => Err(DecodeError::TooShort {
            len: body.len() + 2,
            opcode,
        }),
    }
}

/// Decodes one datagram.
pub fn decode(buf: &[u8]) -> Result<Packet, DecodeError> {
    let [o0, o1, body @ ..] = buf else {
        return Err(DecodeError::TooShort {
            len: buf.len(),
            opcode: 0,
        });
    };
    let opcode = u16::from_be_bytes([*o0, *o1]);
    match opcode {
        OP_RRQ => decode_request(body).map(Packet::Rrq),
        OP_WRQ => decode_request(body).map(Packet::Wrq),
        OP_DATA => {
            let [b0, b1, data @ ..] = body else {
                return Err(DecodeError::TooShort {
                    len: buf.len(),
                    opcode,
                });
            };
            Ok(Packet::Data {
                block: u16::from_be_bytes([*b0, *b1]),
                data: data.to_vec(),
            })
        }
        OP_ACK => Ok(Packet::Ack {
            block: block_of(opcode, body)?,
        }),
        OP_ERROR => {
            let [c0, c1, text @ ..] = body else {
                return Err(DecodeError::TooShort {
                    len: buf.len(),
                    opcode,
                });
            };
            // Clients send error text in any encoding: keep it readable rather than refuse it.
            let end = text
                .iter()
                .position(|&b| b == 0)
                .ok_or(DecodeError::Unterminated {
                    field: "error message",
                })?;
            if end + 1 != text.len() {
                return Err(DecodeError::Trailing {
                    opcode,
                    len: text.len() - end - 1,
                });
            }
            Ok(Packet::Error {
                code: ErrorCode(u16::from_be_bytes([*c0, *c1])),
                message: String::from_utf8_lossy(&text[..end]).into_owned(),
            })
        }
        OP_OACK => {
            let mut rest = body;
            let options = decode_options(&mut rest)?;
            Ok(Packet::Oack { options })
        }
        _ => Err(DecodeError::UnknownOpcode { opcode }),
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// Appends the 4-byte header of a DATA packet for `block`.
pub fn put_data_header(out: &mut Vec<u8>, block: u16) {
    out.extend_from_slice(&OP_DATA.to_be_bytes());
    out.extend_from_slice(&block.to_be_bytes());
}

/// Encodes `packet` to its wire form.
pub fn encode(packet: &Packet) -> Vec<u8> {
    let mut out = Vec::new();
    match packet {
        Packet::Rrq(r) | Packet::Wrq(r) => {
            let op = if matches!(packet, Packet::Rrq(_)) {
                OP_RRQ
            } else {
                OP_WRQ
            };
            out.extend_from_slice(&op.to_be_bytes());
            put_str(&mut out, &r.filename);
            put_str(&mut out, r.mode.as_str());
            for (n, v) in &r.options {
                put_str(&mut out, n);
                put_str(&mut out, v);
            }
        }
        Packet::Data { block, data } => {
            put_data_header(&mut out, *block);
            out.extend_from_slice(data);
        }
        Packet::Ack { block } => {
            out.extend_from_slice(&OP_ACK.to_be_bytes());
            out.extend_from_slice(&block.to_be_bytes());
        }
        Packet::Error { code, message } => {
            out.extend_from_slice(&OP_ERROR.to_be_bytes());
            out.extend_from_slice(&code.0.to_be_bytes());
            // A NUL inside the text would end it early on the wire.
            put_str(&mut out, &message.replace('\0', " "));
        }
        Packet::Oack { options } => {
            out.extend_from_slice(&OP_OACK.to_be_bytes());
            for (n, v) in options {
                put_str(&mut out, n);
                put_str(&mut out, v);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn text(max: usize) -> impl Strategy<Value = String> {
        proptest::string::string_regex(&format!("[a-zA-Z0-9./_-]{{1,{max}}}"))
            .expect("invariant: the regex is valid")
    }

    fn options() -> impl Strategy<Value = Vec<(String, String)>> {
        proptest::collection::vec((text(20), text(20)), 0..6).prop_map(|v| {
            let mut seen = Vec::<String>::new();
            v.into_iter()
                .filter(|(n, _)| {
                    let l = n.to_ascii_lowercase();
                    let fresh = !seen.contains(&l);
                    seen.push(l);
                    fresh
                })
                .collect()
        })
    }

    fn request() -> impl Strategy<Value = Request> {
        let mode = prop_oneof![Just(Mode::Netascii), Just(Mode::Octet), Just(Mode::Mail)];
        (text(200), mode, options()).prop_map(|(filename, mode, options)| Request {
            filename,
            mode,
            options,
        })
    }

    fn packet() -> impl Strategy<Value = Packet> {
        prop_oneof![
            request().prop_map(Packet::Rrq),
            request().prop_map(Packet::Wrq),
            (
                any::<u16>(),
                proptest::collection::vec(any::<u8>(), 0..1500)
            )
                .prop_map(|(block, data)| Packet::Data { block, data }),
            any::<u16>().prop_map(|block| Packet::Ack { block }),
            (any::<u16>(), "[^\0]{0,40}").prop_map(|(c, message)| Packet::Error {
                code: ErrorCode(c),
                message
            }),
            options().prop_map(|options| Packet::Oack { options }),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(p in packet()) {
            prop_assert_eq!(decode(&encode(&p)), Ok(p));
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode(&bytes);
        }
    }

    #[test]
    fn decodes_a_captured_pxe_request() {
        // What OVMF's PXE sends for the NBP: tsize and blksize, mode octet.
        let raw = b"\x00\x01snponly.efi\x00octet\x00tsize\x000\x00blksize\x001468\x00";
        let p = decode(raw).expect("valid request");
        assert_eq!(
            p,
            Packet::Rrq(Request {
                filename: "snponly.efi".into(),
                mode: Mode::Octet,
                options: vec![
                    ("tsize".into(), "0".into()),
                    ("blksize".into(), "1468".into())
                ],
            })
        );
    }

    #[test]
    fn refuses_malformed_requests() {
        let cases: &[&[u8]] = &[
            b"",
            b"\x00",
            b"\x00\x01file",
            b"\x00\x01file\x00",
            b"\x00\x01\x00octet\x00",
            b"\x00\x01f\x00binary\x00",
            b"\x00\x01f\x00octet\x00blksize\x00",
            b"\x00\x01f\x00octet\x00blksize\x00512\x00BLKSIZE\x00512\x00",
            b"\x00\x04\x00",
            b"\x00\x04\x00\x01\x02",
            b"\x00\x09\x00\x01",
            b"\x00\x01f\xff\x00octet\x00",
        ];
        for c in cases {
            assert!(decode(c).is_err(), "{c:?}");
        }
        let long = format!("\x00\x01f\x00octet\x00blksize\x00{}\x00", "9".repeat(65));
        assert!(matches!(
            decode(long.as_bytes()),
            Err(DecodeError::TooLong { .. })
        ));
        let mut many = b"\x00\x01f\x00octet\x00".to_vec();
        for i in 0..=MAX_OPTIONS {
            many.extend_from_slice(format!("o{i}\x001\x00").as_bytes());
        }
        assert_eq!(
            decode(&many),
            Err(DecodeError::TooManyOptions { max: MAX_OPTIONS })
        );
    }
}
