//! A FIFO of bytes kept in fixed 1 KiB blocks recycled through a process-wide pool.
//!
//! The pacer's queue of agent audio was a `VecDeque<u8>`: it keeps the capacity of the largest
//! burst the agent ever sent (a 1–2 s sentence arrives at once: 12 KiB per call kept for the
//! whole call, heard or not). Here a call holds only the blocks its queued audio fills (and at
//! most one partly used block at each end); a drained block goes back to the pool, where another
//! call takes it. Once the pool has warmed up nothing is allocated: blocks move between queues.

use std::collections::VecDeque;
use std::sync::Mutex;

/// Bytes per block (128 ms of G.711).
pub const BLOCK: usize = 1024;
/// Blocks the pool keeps for reuse at most (4 MiB); beyond, drained blocks are freed.
pub const POOL_MAX: usize = 4096;

type Block = Box<[u8; BLOCK]>;

static POOL: Mutex<Vec<Block>> = Mutex::new(Vec::new());

fn take_block() -> Block {
    let pooled = POOL.lock().unwrap_or_else(|e| e.into_inner()).pop();
    pooled.unwrap_or_else(|| Box::new([0; BLOCK]))
}

fn give_block(b: Block) {
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if pool.len() < POOL_MAX {
        pool.push(b);
    }
}

/// Blocks waiting in the pool (for tests and metrics).
pub fn pooled_blocks() -> usize {
    POOL.lock().unwrap_or_else(|e| e.into_inner()).len()
}

/// A FIFO of bytes in pooled blocks.
#[derive(Default)]
pub struct ByteQueue {
    blocks: VecDeque<Block>,
    /// Offset of the first byte in `blocks[0]`.
    head: usize,
    len: usize,
}

impl std::fmt::Debug for ByteQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ByteQueue")
            .field("len", &self.len)
            .field("blocks", &self.blocks.len())
            .finish()
    }
}

impl ByteQueue {
    /// An empty queue (holds no block).
    pub const fn new() -> Self {
        ByteQueue {
            blocks: VecDeque::new(),
            head: 0,
            len: 0,
        }
    }

    /// Bytes queued.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Blocks held.
    pub fn blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Append `src`.
    pub fn extend(&mut self, mut src: &[u8]) {
        while !src.is_empty() {
            let end = self.head + self.len;
            if end == self.blocks.len() * BLOCK {
                self.blocks.push_back(take_block());
            }
            let (b, off) = (end / BLOCK, end % BLOCK);
            let n = (BLOCK - off).min(src.len());
            self.blocks[b][off..off + n].copy_from_slice(&src[..n]);
            self.len += n;
            src = &src[n..];
        }
    }

    /// Prepend `src` (its first byte becomes the queue's first).
    pub fn push_front(&mut self, mut src: &[u8]) {
        while !src.is_empty() {
            if self.head == 0 {
                self.blocks.push_front(take_block());
                self.head = BLOCK;
            }
            let n = self.head.min(src.len());
            let (rest, tail) = src.split_at(src.len() - n);
            self.blocks[0][self.head - n..self.head].copy_from_slice(tail);
            self.head -= n;
            self.len += n;
            src = rest;
        }
    }

    /// Copy the first `dst.len()` bytes (at most [`ByteQueue::len`]) into `dst`.
    pub fn copy_front(&self, dst: &mut [u8]) {
        let mut pos = self.head;
        let mut done = 0;
        let want = dst.len().min(self.len);
        while done < want {
            let (b, off) = (pos / BLOCK, pos % BLOCK);
            let n = (BLOCK - off).min(want - done);
            dst[done..done + n].copy_from_slice(&self.blocks[b][off..off + n]);
            done += n;
            pos += n;
        }
    }

    /// Drop the first `n` bytes (all if fewer are queued).
    pub fn drain_front(&mut self, n: usize) {
        let n = n.min(self.len);
        self.head += n;
        self.len -= n;
        if self.len == 0 {
            self.clear();
            return;
        }
        while self.head >= BLOCK {
            if let Some(b) = self.blocks.pop_front() {
                give_block(b);
            }
            self.head -= BLOCK;
        }
    }

    /// Drop the bytes `from..to` (clamped to the queue), keeping the order of the rest.
    pub fn remove(&mut self, from: usize, to: usize) {
        let to = to.min(self.len);
        if from >= to {
            return;
        }
        if from == 0 {
            self.drain_front(to);
            return;
        }
        let gap = to - from;
        for i in to..self.len {
            let c = self.get(i);
            self.set(i - gap, c);
        }
        self.len -= gap;
        while self.blocks.len() * BLOCK >= self.head + self.len + BLOCK {
            if let Some(b) = self.blocks.pop_back() {
                give_block(b);
            }
        }
    }

    /// Drop everything and give the blocks back to the pool.
    pub fn clear(&mut self) {
        for b in self.blocks.drain(..) {
            give_block(b);
        }
        self.head = 0;
        self.len = 0;
    }

    fn get(&self, i: usize) -> u8 {
        let p = self.head + i;
        self.blocks[p / BLOCK][p % BLOCK]
    }

    fn set(&mut self, i: usize, c: u8) {
        let p = self.head + i;
        self.blocks[p / BLOCK][p % BLOCK] = c;
    }
}

impl Drop for ByteQueue {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Extend(Vec<u8>),
        PushFront(Vec<u8>),
        DrainFront(usize),
        Remove(usize, usize),
        Clear,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => proptest::collection::vec(any::<u8>(), 0..3000).prop_map(Op::Extend),
            1 => proptest::collection::vec(any::<u8>(), 0..1500).prop_map(Op::PushFront),
            4 => (0usize..2500).prop_map(Op::DrainFront),
            1 => (0usize..4000, 0usize..4000).prop_map(|(a, b)| Op::Remove(a.min(b), a.max(b))),
            1 => Just(Op::Clear),
        ]
    }

    proptest! {
        #[test]
        fn behaves_like_a_vecdeque_and_holds_only_the_blocks_its_bytes_fill(
            ops in proptest::collection::vec(op(), 1..60)
        ) {
            let mut q = ByteQueue::new();
            let mut model: VecDeque<u8> = VecDeque::new();
            for op in ops {
                match op {
                    Op::Extend(v) => {
                        q.extend(&v);
                        model.extend(&v);
                    }
                    Op::PushFront(v) => {
                        q.push_front(&v);
                        for &c in v.iter().rev() {
                            model.push_front(c);
                        }
                    }
                    Op::DrainFront(n) => {
                        q.drain_front(n);
                        model.drain(..n.min(model.len()));
                    }
                    Op::Remove(a, b) => {
                        q.remove(a, b);
                        let b = b.min(model.len());
                        if a < b {
                            model.drain(a..b);
                        }
                    }
                    Op::Clear => {
                        q.clear();
                        model.clear();
                    }
                }
                prop_assert_eq!(q.len(), model.len());
                let mut all = vec![0; q.len()];
                q.copy_front(&mut all);
                prop_assert_eq!(&all[..], &model.iter().copied().collect::<Vec<_>>()[..]);
                // At most one partly used block at each end.
                let fill = model.len().div_ceil(BLOCK);
                prop_assert!(q.blocks() <= fill + 1, "{} blocks for {} bytes", q.blocks(), model.len());
                if model.is_empty() {
                    prop_assert_eq!(q.blocks(), 0);
                }
            }
        }
    }
}
