//! Messages of any size, with any number of descriptors, over the control socket.
//!
//! A `SOCK_SEQPACKET` datagram is capped by the sender's socket buffer (`net.core.wmem_default`,
//! 208 KiB on most hosts) and carries at most [`MAX_PACKET_FDS`] descriptors here, while a
//! container's spec can be megabytes (30,000 arguments, the thousands of service-link variables
//! a big Kubernetes namespace injects) and hold hundreds of mounts. So a message travels as one
//! or more packets, each with a small header: the message's tag (the request's sequence number,
//! so that a receiver can fail that request alone whatever went wrong with it), how many
//! descriptors the packet carries, and whether it is the message's first and last. A message
//! that fits one packet, as almost every request does, is one `sendmsg` and one `recvmsg`, as
//! before the framing.
//!
//! A message whose descriptors could not all be received (the receiver is at its
//! `RLIMIT_NOFILE`), that grew past [`MAX_MESSAGE`], or with a packet cut short still arrives,
//! as a [`Broken`] under its tag: the channel carries on with the next message, and the
//! descriptors that did arrive are closed.
//!
//! Each message's packets are sent under a lock, so messages from several threads never
//! interleave. A sender that fails midway stops; the receiver drops the unfinished message
//! when the next one starts.

use std::io::{self, IoSlice};
use std::os::fd::{OwnedFd, RawFd};
use std::sync::Mutex;

use crate::sys::{self, MAX_PACKET_FDS};

/// The largest message either side accepts: above what a runc container's arguments and
/// environment can be (`execve` takes at most 6 MiB of them), JSON-quoted, and small enough for
/// the sandbox to hold while its guests run under their memory limit.
pub const MAX_MESSAGE: usize = 16 << 20;

/// The most payload bytes one packet carries: well under any host's default socket buffer.
const MAX_CHUNK: usize = 64 << 10;

/// Tag (8 bytes, little-endian), descriptor count (1), flags (1).
const HEADER: usize = 10;
const FIRST: u8 = 1;
const LAST: u8 = 2;

/// Why a message arrived unusable; its tag still came with it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Broken {
    /// The receiver could not take the descriptors (the kernel closed those that did not fit).
    #[error(
        "no descriptors left: {arrived} of the {sent} descriptors sent arrived (its open-file limit, RLIMIT_NOFILE, is {limit})"
    )]
    OutOfDescriptors {
        /// How many arrived.
        arrived: usize,
        /// How many were sent.
        sent: usize,
        /// The receiver's `RLIMIT_NOFILE`.
        limit: u64,
    },
    /// The message was larger than [`MAX_MESSAGE`].
    #[error("the message is larger than the {} MiB accepted", MAX_MESSAGE >> 20)]
    TooLarge,
    /// A packet was longer than any the sender makes.
    #[error("a packet of the message was cut short")]
    Truncated,
}

/// A message as it arrived.
#[derive(Debug)]
pub struct Incoming {
    /// The tag it was sent with.
    pub tag: u64,
    /// Its bytes and descriptors, in the order sent, or why they are unusable.
    pub body: Result<(Vec<u8>, Vec<OwnedFd>), Broken>,
}

/// Why a message could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Refused before anything was sent.
    #[error("the message is {size} bytes, more than the {} MiB accepted", MAX_MESSAGE >> 20)]
    TooLarge {
        /// Its size.
        size: usize,
    },
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// One end of the control socket.
#[derive(Debug)]
pub struct Channel {
    socket: OwnedFd,
    /// Held for the whole of a message's packets.
    sending: Mutex<()>,
}

impl Channel {
    /// Frames messages over `socket`, a `SOCK_SEQPACKET` socket.
    pub fn new(socket: OwnedFd) -> Channel {
        Channel {
            socket,
            sending: Mutex::new(()),
        }
    }

    /// Sends `bytes` and `fds` as one message tagged `tag`.
    pub fn send(&self, tag: u64, bytes: &[u8], fds: &[RawFd]) -> Result<(), SendError> {
        if bytes.len() > MAX_MESSAGE {
            return Err(SendError::TooLarge { size: bytes.len() });
        }
        let packets = bytes
            .len()
            .div_ceil(MAX_CHUNK)
            .max(fds.len().div_ceil(MAX_PACKET_FDS))
            .max(1);
        let _sending = self.sending.lock().unwrap_or_else(|e| e.into_inner());
        for i in 0..packets {
            let chunk =
                &bytes[(i * MAX_CHUNK).min(bytes.len())..((i + 1) * MAX_CHUNK).min(bytes.len())];
            let fds = &fds
                [(i * MAX_PACKET_FDS).min(fds.len())..((i + 1) * MAX_PACKET_FDS).min(fds.len())];
            let mut flags = 0;
            if i == 0 {
                flags |= FIRST;
            }
            if i + 1 == packets {
                flags |= LAST;
            }
            let mut header = [0u8; HEADER];
            header[..8].copy_from_slice(&tag.to_le_bytes());
            header[8] = fds.len() as u8;
            header[9] = flags;
            sys::send_packet(
                &self.socket,
                &[IoSlice::new(&header), IoSlice::new(chunk)],
                fds,
            )?;
        }
        Ok(())
    }

    /// Receives the next message; `None` when the peer is gone. Only an error of the socket
    /// itself is an error: whatever is wrong with a message comes back as its [`Broken`].
    pub fn recv(&self) -> io::Result<Option<Incoming>> {
        let mut message: Option<Assembly> = None;
        loop {
            let mut header = [0u8; HEADER];
            let Some(packet) = sys::recv_packet(&self.socket, &mut header, MAX_CHUNK)? else {
                return Ok(None);
            };
            if packet.head_len < HEADER {
                tracing::warn!("dropped a control packet of {} bytes", packet.head_len);
                continue;
            }
            let tag = u64::from_le_bytes(header[..8].try_into().expect("8 bytes"));
            let (sent_fds, flags) = (header[8] as usize, header[9]);
            if flags & FIRST != 0 {
                if let Some(unfinished) = message.take() {
                    tracing::warn!(
                        "dropped message {} that its sender left unfinished",
                        unfinished.tag
                    );
                }
                message = Some(Assembly::new(tag));
            }
            let Some(assembly) = message.as_mut().filter(|m| m.tag == tag) else {
                tracing::warn!("dropped a control packet of message {tag}, which never began");
                continue;
            };
            assembly.add(packet, sent_fds);
            if flags & LAST != 0 {
                return Ok(message.take().map(Assembly::finish));
            }
        }
    }
}

/// A message whose packets are arriving.
struct Assembly {
    tag: u64,
    bytes: Vec<u8>,
    fds: Vec<OwnedFd>,
    sent_fds: usize,
    arrived_fds: usize,
    /// What went wrong first; the message is then only counted, not kept.
    fault: Option<Fault>,
}

#[derive(Clone, Copy)]
enum Fault {
    OutOfDescriptors,
    Truncated,
    TooLarge,
}

impl Assembly {
    fn new(tag: u64) -> Assembly {
        Assembly {
            tag,
            bytes: Vec::new(),
            fds: Vec::new(),
            sent_fds: 0,
            arrived_fds: 0,
            fault: None,
        }
    }

    fn add(&mut self, packet: sys::Packet, sent_fds: usize) {
        self.sent_fds += sent_fds;
        self.arrived_fds += packet.fds.len();
        let fault = if packet.fds_truncated || packet.fds.len() < sent_fds {
            Some(Fault::OutOfDescriptors)
        } else if packet.truncated {
            Some(Fault::Truncated)
        } else if self.bytes.len() + packet.body.len() > MAX_MESSAGE {
            Some(Fault::TooLarge)
        } else {
            None
        };
        if let Some(fault) = fault {
            self.fault.get_or_insert(fault);
        }
        if self.fault.is_some() {
            // Nothing of a broken message is used: its memory and descriptors go at once.
            self.bytes = Vec::new();
            self.fds = Vec::new();
        } else if self.bytes.is_empty() {
            self.bytes = packet.body;
            self.fds.extend(packet.fds);
        } else {
            self.bytes.extend_from_slice(&packet.body);
            self.fds.extend(packet.fds);
        }
    }

    fn finish(self) -> Incoming {
        let body = match self.fault {
            None => Ok((self.bytes, self.fds)),
            Some(Fault::OutOfDescriptors) => Err(Broken::OutOfDescriptors {
                arrived: self.arrived_fds,
                sent: self.sent_fds,
                limit: sys::open_file_limit(),
            }),
            Some(Fault::Truncated) => Err(Broken::Truncated),
            Some(Fault::TooLarge) => Err(Broken::TooLarge),
        };
        Incoming {
            tag: self.tag,
            body,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::fd::AsRawFd;

    use super::*;

    fn pair() -> (Channel, Channel) {
        let (a, b) = sys::socket_pair().unwrap();
        (Channel::new(a), Channel::new(b))
    }

    /// Sends on a thread (a message larger than the socket's buffer blocks until it is read)
    /// and returns what arrived.
    fn round_trip(bytes: Vec<u8>, fds: Vec<OwnedFd>) -> Incoming {
        let (tx, rx) = pair();
        let sender = std::thread::spawn(move || {
            let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
            tx.send(7, &bytes, &raw).unwrap();
        });
        let incoming = rx.recv().unwrap().expect("a message");
        sender.join().unwrap();
        incoming
    }

    #[test]
    fn messages_of_any_size_up_to_the_limit_arrive_whole() {
        for size in [
            0,
            1,
            MAX_CHUNK - 1,
            MAX_CHUNK,
            MAX_CHUNK + 1,
            // Above the default socket buffer (208 KiB), which failed with "Message too long".
            233 << 10,
            1 << 20,
            4 << 20,
            MAX_MESSAGE,
        ] {
            let bytes: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let incoming = round_trip(bytes.clone(), Vec::new());
            assert_eq!(incoming.tag, 7);
            let (got, fds) = incoming.body.unwrap();
            assert!(got == bytes, "{size} bytes came back as {}", got.len());
            assert!(fds.is_empty());
        }
    }

    #[test]
    fn hundreds_of_descriptors_arrive_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<std::fs::File> = (0..300)
            .map(|i| std::fs::File::create(dir.path().join(i.to_string())).unwrap())
            .collect();
        let inodes = |files: &[std::fs::File]| -> Vec<u64> {
            use std::os::unix::fs::MetadataExt;
            files.iter().map(|f| f.metadata().unwrap().ino()).collect()
        };
        let sent = inodes(&files);
        let incoming = round_trip(
            b"{}".to_vec(),
            files.into_iter().map(OwnedFd::from).collect(),
        );
        let (bytes, fds) = incoming.body.unwrap();
        assert_eq!(bytes, b"{}");
        let received: Vec<std::fs::File> = fds.into_iter().map(std::fs::File::from).collect();
        assert_eq!(inodes(&received), sent);
    }

    /// Sends one raw packet, as a peer that does not follow the framing might.
    fn raw(channel: &Channel, tag: u64, fd_count: u8, flags: u8, body: &[u8], fds: &[RawFd]) {
        let mut header = [0u8; HEADER];
        header[..8].copy_from_slice(&tag.to_le_bytes());
        header[8] = fd_count;
        header[9] = flags;
        sys::send_packet(
            &channel.socket,
            &[IoSlice::new(&header), IoSlice::new(body)],
            fds,
        )
        .unwrap();
    }

    #[test]
    fn descriptors_the_receiver_cannot_take_fail_that_message_alone_and_are_closed() {
        let (tx, rx) = pair();
        let (mut read_end, write_end) = std::io::pipe().unwrap();
        // More than a packet has room for: the kernel cuts them (MSG_CTRUNC), as it does when
        // the receiver is at its RLIMIT_NOFILE.
        let copies = vec![write_end.as_raw_fd(); 100];
        raw(&tx, 3, 100, FIRST | LAST, b"{}", &copies);
        tx.send(4, b"next", &[]).unwrap();
        drop(write_end);
        let broken = rx.recv().unwrap().unwrap();
        assert_eq!(broken.tag, 3);
        match broken.body.unwrap_err() {
            Broken::OutOfDescriptors { arrived, sent, .. } => {
                assert_eq!((arrived, sent), (MAX_PACKET_FDS, 100));
            }
            other => panic!("{other:?}"),
        }
        // Every copy that did arrive is closed: the pipe's reader sees its end.
        assert_eq!(read_end.read(&mut [0u8; 1]).unwrap(), 0);
        let next = rx.recv().unwrap().unwrap();
        assert_eq!((next.tag, next.body.unwrap().0), (4, b"next".to_vec()));
    }

    #[test]
    fn a_message_over_the_limit_is_refused_by_either_side() {
        let (tx, rx) = pair();
        assert!(matches!(
            tx.send(1, &vec![0; MAX_MESSAGE + 1], &[]),
            Err(SendError::TooLarge { size }) if size == MAX_MESSAGE + 1
        ));
        // A sender that does not check: the receiver drops the message, not the channel.
        let sender = std::thread::spawn(move || {
            let chunk = vec![b'x'; MAX_CHUNK];
            let chunks = MAX_MESSAGE / MAX_CHUNK + 1;
            for i in 0..chunks {
                let flags = if i == 0 { FIRST } else { 0 } | if i + 1 == chunks { LAST } else { 0 };
                raw(&tx, 2, 0, flags, &chunk, &[]);
            }
            tx.send(3, b"next", &[]).unwrap();
        });
        let broken = rx.recv().unwrap().unwrap();
        assert_eq!(
            (broken.tag, broken.body.unwrap_err()),
            (2, Broken::TooLarge)
        );
        let next = rx.recv().unwrap().unwrap();
        assert_eq!((next.tag, next.body.unwrap().0), (3, b"next".to_vec()));
        sender.join().unwrap();
    }

    #[test]
    fn malformed_and_unfinished_packets_are_dropped_and_the_channel_goes_on() {
        let (tx, rx) = pair();
        // Shorter than a header.
        sys::send_packet(&tx.socket, &[IoSlice::new(b"abc")], &[]).unwrap();
        // A message whose sender gave up after its first packet.
        raw(&tx, 5, 0, FIRST, b"half", &[]);
        // A packet of a message that never began.
        raw(&tx, 6, 0, LAST, b"tail", &[]);
        // Longer than any packet a sender makes.
        raw(&tx, 7, 0, FIRST | LAST, &vec![0; MAX_CHUNK + 1], &[]);
        tx.send(8, b"whole", &[]).unwrap();
        let cut = rx.recv().unwrap().unwrap();
        assert_eq!((cut.tag, cut.body.unwrap_err()), (7, Broken::Truncated));
        let next = rx.recv().unwrap().unwrap();
        assert_eq!((next.tag, next.body.unwrap().0), (8, b"whole".to_vec()));
        drop(tx);
        assert!(rx.recv().unwrap().is_none());
    }
}
