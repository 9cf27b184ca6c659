//! Reading an eBPF ring buffer on the event loop: wake when the kernel signals data (or at
//! least once a second, so per-second summaries go out on time), hand every record to `item`,
//! then call `tick`.

use std::os::fd::OwnedFd;
use std::time::Duration;

use aya::maps::{MapData, RingBuf};

use super::CtxRef;

pub fn spawn(
    ctx: &CtxRef,
    what: &'static str,
    (mut rb, fd): (RingBuf<MapData>, OwnedFd),
    mut item: impl FnMut(&CtxRef, &[u8]) + 'static,
    mut tick: impl FnMut(&CtxRef) + 'static,
) {
    let Ok(fd) = smol::Async::new(fd) else {
        crate::log!("nanoclaw: {what} will not be audited: cannot watch the ring buffer");
        return;
    };
    let c = ctx.clone();
    ctx.ex
        .spawn(async move {
            loop {
                let second = async {
                    smol::Timer::after(Duration::from_secs(1)).await;
                    Ok(())
                };
                if smol::future::or(fd.readable(), second).await.is_err() {
                    smol::Timer::after(Duration::from_millis(100)).await;
                }
                while let Some(rec) = rb.next() {
                    item(&c, &rec);
                }
                tick(&c);
            }
        })
        .detach();
}
