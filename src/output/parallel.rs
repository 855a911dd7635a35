//! Block-wise work on all cores with results consumed in order: one reader, N workers, and a
//! window of blocks in flight, so memory stays flat whatever the disk's size.

use std::collections::BTreeMap;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use anyhow::{anyhow, Result};

/// Runs `work` on each item of `items` on all cores, handing the results to `consume` in the
/// items' order. At most `window` items are read but not yet consumed.
pub fn map_ordered<T: Send, R: Send>(
    items: impl Iterator<Item = Result<T>> + Send,
    window: usize,
    work: impl Fn(T) -> Result<R> + Sync,
    mut consume: impl FnMut(R) -> Result<()>,
) -> Result<()> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let (permit_tx, permit_rx) = sync_channel::<()>(window);
    for _ in 0..window {
        permit_tx.send(()).unwrap();
    }
    let (in_tx, in_rx) = sync_channel::<(usize, T)>(workers * 2);
    let in_rx = Mutex::new(in_rx);
    let (out_tx, out_rx) = sync_channel::<(usize, Result<R>)>(window);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| -> Result<()> {
        let stop = &stop;
        let reader = s.spawn(move || -> Result<()> {
            for (i, item) in items.enumerate() {
                if permit_rx.recv().is_err() || stop.load(Ordering::SeqCst) {
                    return Ok(());
                }
                if in_tx.send((i, item?)).is_err() {
                    return Ok(());
                }
            }
            Ok(())
        });
        for _ in 0..workers {
            let out_tx = out_tx.clone();
            let in_rx = &in_rx;
            let work = &work;
            s.spawn(move || loop {
                let next = in_rx.lock().unwrap().recv();
                let Ok((i, item)) = next else { return };
                if out_tx.send((i, work(item))).is_err() {
                    return;
                }
            });
        }
        drop(out_tx);
        let result = consume_in_order(&out_rx, &permit_tx, &mut consume);
        // On error, stop the reader (closing the permits wakes it) and let the workers finish
        // what they hold, dropping their results, until every channel has closed.
        stop.store(true, Ordering::SeqCst);
        drop(permit_tx);
        for _ in out_rx.iter() {}
        let read = reader.join().map_err(|_| anyhow!("the reader thread panicked"))?;
        result.and(read)
    })
}

fn consume_in_order<R>(
    out_rx: &Receiver<(usize, Result<R>)>,
    permits: &std::sync::mpsc::SyncSender<()>,
    consume: &mut impl FnMut(R) -> Result<()>,
) -> Result<()> {
    let mut pending = BTreeMap::new();
    let mut next = 0;
    for (i, r) in out_rx.iter() {
        pending.insert(i, r);
        while let Some(r) = pending.remove(&next) {
            consume(r?)?;
            next += 1;
            let _ = permits.try_send(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_arrive_in_order_and_errors_stop_the_run() {
        let mut seen = Vec::new();
        map_ordered((0..1000u64).map(Ok), 8, |x| Ok(x * 2), |r| {
            seen.push(r);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, (0..1000u64).map(|x| x * 2).collect::<Vec<_>>());

        let err = map_ordered((0..1000u64).map(Ok), 8, |x| if x == 500 { Err(anyhow!("bad block")) } else { Ok(x) }, |_| Ok(()));
        assert!(err.unwrap_err().to_string().contains("bad block"));
        let err = map_ordered((0..10u64).map(|x| if x == 3 { Err(anyhow!("read failed")) } else { Ok(x) }), 4, Ok, |_| Ok(()));
        assert!(err.unwrap_err().to_string().contains("read failed"));
    }
}
