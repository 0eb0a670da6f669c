//! `poll_oneoff` (and WasmEdge's `epoll_oneoff`, served the same way) over sockets, files and
//! clocks together.
//!
//! A poll that names no socket is wasmtime-wasi's. One that does waits here, on the reactor, for
//! the sockets and the earliest clock; the other descriptors in it (stdin, files) are asked of
//! wasmtime-wasi without waiting at every turn, and while there are any the wait is sliced so
//! that one of them becoming ready is seen within [`SLICE`]. `epoll_oneoff` is edge-triggered
//! in WasmEdge; reporting readiness level-triggered is a superset a correct edge-triggered
//! guest handles (it reads until `EAGAIN` either way).

use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::Interest;

use super::{Host, wasi, with};
use crate::WasmEdgeView;
use crate::memory::{Errno, Mem};

/// How often descriptors that are not sockets are asked again during a wait.
const SLICE: Duration = Duration::from_millis(10);

/// Sizes of a `subscription` and an `event`.
const SUBSCRIPTION: u32 = 48;
const EVENT: u32 = 32;

/// `eventtype` codes.
const CLOCK: u8 = 0;
const FD_READ: u8 = 1;
const FD_WRITE: u8 = 2;

/// `subclockflags` bit: the timeout is an absolute time.
const ABSTIME: u16 = 1;
/// `eventrwflags` bit: the peer hung up.
const HANGUP: u16 = 1;

/// `clockid`s.
const REALTIME: u32 = 0;
const MONOTONIC: u32 = 1;

/// One subscription, as read from the guest.
struct Subscription {
    userdata: u64,
    what: What,
    /// The guest's bytes, for handing it on to wasmtime-wasi unchanged.
    raw: Vec<u8>,
}

enum What {
    Clock(Instant),
    Socket(std::sync::Arc<crate::socket::GuestSocket>, Interest),
    /// A descriptor wasmtime-wasi owns.
    Other,
}

/// An event, in the guest's layout.
fn event(userdata: u64, kind: u8, hangup: bool) -> [u8; EVENT as usize] {
    let mut bytes = [0u8; EVENT as usize];
    bytes[0..8].copy_from_slice(&userdata.to_le_bytes());
    bytes[10] = kind;
    if hangup {
        bytes[24..26].copy_from_slice(&HANGUP.to_le_bytes());
    }
    bytes
}

pub(crate) async fn poll_oneoff(
    caller: &mut Host<'_, impl WasmEdgeView>,
    subscriptions: u32,
    events: u32,
    count: u32,
    count_out: u32,
) -> wasmtime::Result<i32> {
    let parsed = with(caller, |mem, state| {
        if count == 0 {
            return Err(Errno::INVAL);
        }
        mem.bytes(
            subscriptions,
            count.checked_mul(SUBSCRIPTION).ok_or(Errno::FAULT)?,
        )?;
        mem.bytes_mut(events, count.checked_mul(EVENT).ok_or(Errno::FAULT)?)?;
        mem.bytes_mut(count_out, 4)?;
        (0..count)
            .map(|i| read_subscription(mem, subscriptions + i * SUBSCRIPTION, &state.sockets))
            .collect::<Result<Vec<_>, Errno>>()
    });
    let subs = match parsed {
        Ok(subs) => subs,
        Err(errno) => return Ok(i32::from(errno.0)),
    };
    if !subs.iter().any(|s| matches!(s.what, What::Socket(..))) {
        return wasi!(
            caller,
            poll_oneoff(subscriptions, events, count, count_out).await
        );
    }
    let others: Vec<&Subscription> = subs
        .iter()
        .filter(|s| matches!(s.what, What::Other))
        .collect();
    let deadline = subs
        .iter()
        .filter_map(|s| match s.what {
            What::Clock(at) => Some(at),
            _ => None,
        })
        .min();
    loop {
        let mut ready = Vec::new();
        if !others.is_empty() {
            ready = ask_wasi(caller, &others, subscriptions, events, count_out).await?;
        }
        ready.extend(sockets_ready(
            &subs,
            &mut Context::from_waker(Waker::noop()),
        ));
        let now = Instant::now();
        ready.extend(subs.iter().filter_map(|s| match s.what {
            What::Clock(at) if at <= now => Some(event(s.userdata, CLOCK, false)),
            _ => None,
        }));
        if !ready.is_empty() {
            let written = with(caller, |mem, _| {
                for (i, bytes) in ready.iter().take(count as usize).enumerate() {
                    mem.write(events + i as u32 * EVENT, bytes)?;
                }
                mem.set_u32(count_out, ready.len().min(count as usize) as u32)
            });
            return Ok(crate::memory::status(written));
        }
        let slice = (!others.is_empty()).then(|| now + SLICE);
        let wake_at = match (deadline, slice) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let mut sleep = wake_at.map(|at| Box::pin(tokio::time::sleep_until(at.into())));
        std::future::poll_fn(|cx| {
            if !sockets_ready(&subs, cx).is_empty() {
                return Poll::Ready(());
            }
            match &mut sleep {
                Some(sleep) => sleep.as_mut().poll(cx),
                None => Poll::Pending,
            }
        })
        .await;
    }
}

fn read_subscription(
    mem: &Mem<'_>,
    at: u32,
    sockets: &crate::socket::SocketTable,
) -> Result<Subscription, Errno> {
    let userdata = mem.u64(at)?;
    let raw = mem.bytes(at, SUBSCRIPTION)?.to_vec();
    let what = match mem.u8(at + 8)? {
        CLOCK => What::Clock(deadline(
            mem.u32(at + 16)?,
            mem.u64(at + 24)?,
            mem.u16(at + 40)?,
        )?),
        kind @ (FD_READ | FD_WRITE) => match sockets.get(mem.u32(at + 16)?) {
            Some(socket) => {
                let interest = if kind == FD_READ {
                    Interest::READABLE
                } else {
                    Interest::WRITABLE
                };
                What::Socket(socket, interest)
            }
            None => What::Other,
        },
        _ => return Err(Errno::INVAL),
    };
    Ok(Subscription {
        userdata,
        what,
        raw,
    })
}

/// When a clock subscription fires. An absolute monotonic time would need wasmtime-wasi's
/// clock origin, which it does not expose; guests (mio, tokio) use relative timeouts.
fn deadline(clock: u32, timeout: u64, flags: u16) -> Result<Instant, Errno> {
    let now = Instant::now();
    let relative = if flags & ABSTIME == 0 {
        Duration::from_nanos(timeout)
    } else if clock == REALTIME {
        let since_epoch = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        Duration::from_nanos(timeout).saturating_sub(since_epoch)
    } else if clock == MONOTONIC {
        return Err(Errno::NOTSUP);
    } else {
        return Err(Errno::INVAL);
    };
    Ok(now
        .checked_add(relative)
        .unwrap_or(now + Duration::from_secs(u32::MAX as u64)))
}

/// The events of the sockets that are ready, registering `cx` with those that are not.
fn sockets_ready(subs: &[Subscription], cx: &mut Context<'_>) -> Vec<[u8; EVENT as usize]> {
    subs.iter()
        .filter_map(|s| match &s.what {
            What::Socket(socket, interest) => match socket.poll_ready(*interest, cx) {
                Poll::Ready(hangup) => {
                    let kind = if interest.is_readable() {
                        FD_READ
                    } else {
                        FD_WRITE
                    };
                    Some(event(s.userdata, kind, hangup))
                }
                Poll::Pending => None,
            },
            _ => None,
        })
        .collect()
}

/// Asks wasmtime-wasi, without waiting, which of `others` are ready. Its `poll_oneoff` reads
/// subscriptions from guest memory, so they are written over the start of the guest's own
/// array (there is room: at least one of its entries is a socket) followed by a zero timeout,
/// and the guest's bytes are put back after the call.
async fn ask_wasi(
    caller: &mut Host<'_, impl WasmEdgeView>,
    others: &[&Subscription],
    subscriptions: u32,
    events: u32,
    count_out: u32,
) -> wasmtime::Result<Vec<[u8; EVENT as usize]>> {
    let asked = others.len() as u32 + 1;
    let len = asked * SUBSCRIPTION;
    let saved = with(caller, |mem, _| {
        let saved = mem.bytes(subscriptions, len)?.to_vec();
        for (i, sub) in others.iter().enumerate() {
            mem.write(subscriptions + i as u32 * SUBSCRIPTION, &sub.raw)?;
        }
        let mut now = [0u8; SUBSCRIPTION as usize];
        now[0..8].copy_from_slice(&u64::MAX.to_le_bytes());
        now[8] = CLOCK;
        now[16..20].copy_from_slice(&MONOTONIC.to_le_bytes());
        mem.write(subscriptions + (asked - 1) * SUBSCRIPTION, &now)?;
        Ok(saved)
    })
    .map_err(|Errno(e)| wasmtime::format_err!("poll_oneoff: guest memory changed (errno {e})"))?;
    let errno = wasi!(
        caller,
        poll_oneoff(subscriptions, events, asked, count_out).await
    )?;
    let found = with(caller, |mem, _| {
        mem.write(subscriptions, &saved)?;
        if errno != 0 {
            return Ok(Vec::new());
        }
        let n = mem.u32(count_out)?.min(asked);
        (0..n)
            .map(|i| {
                let bytes: [u8; EVENT as usize] = mem
                    .bytes(events + i * EVENT, EVENT)?
                    .try_into()
                    .expect("event size");
                Ok(bytes)
            })
            .filter(|bytes| !matches!(bytes, Ok(b) if b[10] == CLOCK && b[0..8] == [0xff; 8]))
            .collect()
    });
    found.map_err(|Errno(e)| wasmtime::format_err!("poll_oneoff: guest memory changed (errno {e})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::INET4;
    use crate::socket::{GuestSocket, Kind, SocketTable};

    /// A subscription in the guest's layout: `userdata`, its type, and for a descriptor its fd
    /// at +16; for a clock its id at +16, timeout at +24 and flags at +40.
    fn subscription(
        userdata: u64,
        kind: u8,
        fd_or_clock: u32,
        timeout: u64,
        flags: u16,
    ) -> Vec<u8> {
        let mut bytes = vec![0u8; SUBSCRIPTION as usize];
        bytes[0..8].copy_from_slice(&userdata.to_le_bytes());
        bytes[8] = kind;
        bytes[16..20].copy_from_slice(&fd_or_clock.to_le_bytes());
        bytes[24..32].copy_from_slice(&timeout.to_le_bytes());
        bytes[40..42].copy_from_slice(&flags.to_le_bytes());
        bytes
    }

    fn read(bytes: &mut [u8], sockets: &SocketTable) -> Result<Subscription, Errno> {
        read_subscription(&Mem(bytes), 0, sockets)
    }

    #[test]
    fn an_event_carries_userdata_type_and_hangup_where_the_guest_reads_them() {
        let ready = event(0x0102_0304_0506_0708, FD_READ, true);
        assert_eq!(
            u64::from_le_bytes(ready[0..8].try_into().unwrap()),
            0x0102_0304_0506_0708
        );
        // errno 0 at +8, type at +10, the flags of a read or write event at +24.
        assert_eq!(&ready[8..10], &[0, 0]);
        assert_eq!(ready[10], FD_READ);
        assert_eq!(u16::from_le_bytes([ready[24], ready[25]]), HANGUP);
        assert_eq!(event(1, CLOCK, false)[24..26], [0, 0]);
    }

    #[test]
    fn a_subscription_on_a_socket_waits_here_and_others_go_to_wasi() {
        let mut sockets = SocketTable::default();
        let fd = sockets.insert(GuestSocket::open(INET4, Kind::Stream as u8).unwrap());
        let mut on_socket = subscription(7, FD_WRITE, fd, 0, 0);
        let read_socket = read(&mut on_socket, &sockets).unwrap();
        assert_eq!(read_socket.userdata, 7);
        assert!(matches!(read_socket.what, What::Socket(_, interest) if interest.is_writable()));
        assert_eq!(read_socket.raw, on_socket);
        // stdin, a file: wasmtime-wasi's.
        let mut on_stdin = subscription(8, FD_READ, 0, 0, 0);
        assert!(matches!(
            read(&mut on_stdin, &sockets).unwrap().what,
            What::Other
        ));
        let mut unknown = subscription(9, 3, fd, 0, 0);
        assert_eq!(read(&mut unknown, &sockets).err(), Some(Errno::INVAL));
    }

    #[test]
    fn clocks_fire_after_a_relative_timeout_or_at_a_realtime_instant() {
        let before = Instant::now();
        let relative = deadline(MONOTONIC, 5_000_000_000, 0).unwrap();
        assert!(relative >= before + Duration::from_secs(5));
        // An absolute time already past fires at once.
        assert!(deadline(REALTIME, 1, ABSTIME).unwrap() <= Instant::now());
        // An absolute monotonic time would need wasmtime-wasi's clock origin.
        assert_eq!(deadline(MONOTONIC, 1, ABSTIME).err(), Some(Errno::NOTSUP));
        assert_eq!(deadline(9, 1, ABSTIME).err(), Some(Errno::INVAL));
        // A timeout past what an Instant holds does not overflow.
        assert!(deadline(MONOTONIC, u64::MAX, 0).is_ok());
    }

    #[tokio::test]
    async fn a_socket_with_a_datagram_waiting_is_reported_readable() {
        let mut sockets = SocketTable::default();
        let receiver = GuestSocket::open(INET4, Kind::Datagram as u8).unwrap();
        receiver.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let to = receiver.local_addr().unwrap();
        let fd = sockets.insert(receiver);
        let subs = [read(&mut subscription(42, FD_READ, fd, 0, 0), &sockets).unwrap()];
        let sender = GuestSocket::open(INET4, Kind::Datagram as u8).unwrap();
        sender.send(b"x", Some(to)).await.unwrap();
        let events = std::future::poll_fn(|cx| {
            let events = sockets_ready(&subs, cx);
            match events.is_empty() {
                true => Poll::Pending,
                false => Poll::Ready(events),
            }
        })
        .await;
        assert_eq!(events, [event(42, FD_READ, false)]);
    }
}
