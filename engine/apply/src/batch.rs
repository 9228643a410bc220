//! The unit of replication: a batch of client commands, archived with rkyv.
//!
//! The sequencer packs commands into one [`Batch`] per Raft entry ([`BatchBuilder`], bounded by
//! bytes and by count). The bytes are validated once where they enter from outside (network or
//! disk, [`validate`]); from then on apply reads them in place as an [`ArchivedBatch`] without
//! deserializing or copying a payload.

use bytes::Bytes;
use rkyv::rancor;
use rkyv::util::AlignedVec;

/// One client command. `session == 0` means "no session": the command is not deduplicated.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Command {
    pub session: u64,
    /// Sequence number within the session, starting at 1 and increasing by one per command.
    pub seq: u64,
    /// Opaque to everything but the state machine.
    pub payload: Bytes,
}

/// The payload of one Raft entry of kind `Normal`.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Batch {
    pub commands: Vec<Command>,
}

/// Bytes one command adds to a batch besides its payload (archived header and padding).
pub const COMMAND_OVERHEAD_BYTES: usize = 32;

/// Why bytes are not a valid batch.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("batch of {bytes} bytes fails validation: {reason}")]
    Invalid { bytes: usize, reason: String },
    #[error("batch has {count} commands, more than batch_commands_max ({max})")]
    TooManyCommands { count: usize, max: usize },
}

/// Packs commands into a batch, refusing what would exceed its limits.
#[derive(Debug)]
pub struct BatchBuilder {
    batch: Batch,
    bytes: usize,
    bytes_max: usize,
    commands_max: usize,
}

impl BatchBuilder {
    /// A builder for batches of at most `bytes_max` bytes and `commands_max` commands.
    ///
    /// # Panics
    /// If either limit is zero (the runtime's config validation refuses that first).
    pub fn new(bytes_max: usize, commands_max: usize) -> BatchBuilder {
        assert!(bytes_max > 0 && commands_max > 0, "batch limits must be positive");
        BatchBuilder { batch: Batch::default(), bytes: 0, bytes_max, commands_max }
    }

    /// Adds a command if it fits; gives it back otherwise (the caller closes this batch and
    /// starts the next with it). A single command larger than `bytes_max` never fits: the caller
    /// must refuse it as too large before it gets here.
    ///
    /// # Errors
    /// The command itself, when the batch is full.
    pub fn push(&mut self, command: Command) -> Result<(), Command> {
        let size = command.payload.len() + COMMAND_OVERHEAD_BYTES;
        if self.batch.commands.len() >= self.commands_max || self.bytes + size > self.bytes_max {
            return Err(command);
        }
        self.bytes += size;
        self.batch.commands.push(command);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.batch.commands.len()
    }

    pub fn is_empty(&self) -> bool {
        self.batch.commands.is_empty()
    }

    /// Bytes the batch will take, about.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Archives the batch and starts an empty one (keeping the command list's allocation).
    pub fn finish(&mut self) -> Bytes {
        let bytes = encode_in(&self.batch, archive_bytes_max(&self.batch));
        self.batch.commands.clear();
        self.bytes = 0;
        bytes
    }
}

/// Bytes of one archived command beside its payload: session, sequence number, and the
/// payload's relative pointer and length.
const ARCHIVED_COMMAND_BYTES: usize = 24;
/// Bytes of an archive beyond its commands: the command array's alignment (up to 7) and the
/// root (8).
const ARCHIVE_SLACK_BYTES: usize = 16;

/// The most bytes `batch` archives to. The archive's buffer is sized with it, so it is never
/// regrown (a test checks the bound), and it is kept by the entry, so it is tight.
fn archive_bytes_max(batch: &Batch) -> usize {
    let payloads: usize = batch.commands.iter().map(|c| c.payload.len()).sum();
    payloads + batch.commands.len() * ARCHIVED_COMMAND_BYTES + ARCHIVE_SLACK_BYTES
}

/// Archives a batch.
pub fn encode(batch: &Batch) -> Bytes {
    encode_in(batch, archive_bytes_max(batch))
}

/// Archives `batch` into a buffer of `capacity` bytes, which the returned bytes own: no copy
/// after archiving, and the archive stays [`ARCHIVE_ALIGN`]-aligned. Sized from the batch, the
/// buffer is not regrown on the way (each regrowth copied the archive, and the final conversion
/// to a `Vec` copied it once more).
fn encode_in(batch: &Batch, capacity: usize) -> Bytes {
    let buffer = AlignedVec::<ARCHIVE_ALIGN>::with_capacity(capacity);
    let aligned =
        rkyv::api::high::to_bytes_in::<_, rancor::Error>(batch, buffer).expect("archiving into memory cannot fail");
    Bytes::from_owner(aligned)
}

/// Checks that `bytes` are a well-formed archived batch of at most `commands_max` commands.
/// This is the trust boundary: run it on every batch received from a peer or read back from
/// disk, before anything reads it in place.
///
/// # Errors
/// [`BatchError`] naming what is wrong.
pub fn validate(bytes: &[u8], commands_max: usize) -> Result<(), BatchError> {
    let check = |aligned: &[u8]| -> Result<usize, BatchError> {
        rkyv::access::<ArchivedBatch, rancor::Error>(aligned)
            .map(|b| b.commands.len())
            .map_err(|e| BatchError::Invalid { bytes: bytes.len(), reason: e.to_string() })
    };
    let count = if is_aligned(bytes) {
        check(bytes)?
    } else {
        // Bytes sliced out of a network buffer may sit at any address; validation copies them
        // once into an aligned buffer rather than refuse them.
        let mut copy = AlignedVec::<16>::with_capacity(bytes.len());
        copy.extend_from_slice(bytes);
        check(&copy)?
    };
    if count > commands_max {
        return Err(BatchError::TooManyCommands { count, max: commands_max });
    }
    Ok(())
}

/// Whether `bytes` start at an address rkyv can read an archived batch from in place.
pub fn is_aligned(bytes: &[u8]) -> bool {
    (bytes.as_ptr() as usize).is_multiple_of(ARCHIVE_ALIGN)
}

/// The alignment an archived batch needs to be read in place. The log pads payloads to 16.
pub const ARCHIVE_ALIGN: usize = 16;

/// Reads a batch in place.
///
/// # Errors
/// [`BatchError::Invalid`] if the bytes are not aligned or not a valid batch. Bytes that
/// passed [`validate`] and are aligned always succeed.
pub fn view(bytes: &[u8]) -> Result<&ArchivedBatch, BatchError> {
    if !is_aligned(bytes) {
        return Err(BatchError::Invalid { bytes: bytes.len(), reason: format!("not {ARCHIVE_ALIGN}-byte aligned") });
    }
    rkyv::access::<ArchivedBatch, rancor::Error>(bytes)
        .map_err(|e| BatchError::Invalid { bytes: bytes.len(), reason: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn aligned(bytes: &[u8]) -> AlignedVec<16> {
        let mut v = AlignedVec::<16>::new();
        v.extend_from_slice(bytes);
        v
    }

    #[test]
    fn builder_respects_both_limits() {
        let mut b = BatchBuilder::new(200, 3);
        let cmd = |n: usize| Command { session: 1, seq: n as u64, payload: vec![7; 50].into() };
        assert!(b.push(cmd(1)).is_ok());
        assert!(b.push(cmd(2)).is_ok());
        assert!(b.push(cmd(3)).is_err(), "2 * 82 + 82 bytes > 200");
        let mut c = BatchBuilder::new(10_000, 2);
        c.push(cmd(1)).unwrap();
        c.push(cmd(2)).unwrap();
        assert_eq!(c.push(cmd(3)).unwrap_err(), cmd(3), "the refused command comes back intact");
        let bytes = c.finish();
        assert!(c.is_empty());
        let stored = aligned(&bytes);
        let batch = view(&stored).unwrap();
        assert_eq!(batch.commands.len(), 2);
        assert_eq!(batch.commands[1].payload.as_slice(), &[7; 50][..]);
    }

    /// The layout of the build that held payloads as `Vec<u8>`: logs it wrote must read the same.
    #[derive(rkyv::Archive, rkyv::Serialize)]
    struct VecCommand {
        session: u64,
        seq: u64,
        payload: Vec<u8>,
    }

    #[derive(rkyv::Archive, rkyv::Serialize)]
    struct VecBatch {
        commands: Vec<VecCommand>,
    }

    #[test]
    fn payloads_held_as_bytes_archive_as_vectors_did() {
        let lens = [0usize, 1, 7, 128, 300];
        let old = VecBatch {
            commands: lens
                .iter()
                .map(|&n| VecCommand { session: n as u64, seq: 1, payload: vec![n as u8; n] })
                .collect(),
        };
        let new = Batch {
            commands: lens
                .iter()
                .map(|&n| Command { session: n as u64, seq: 1, payload: vec![n as u8; n].into() })
                .collect(),
        };
        let old_bytes = rkyv::to_bytes::<rancor::Error>(&old).unwrap();
        assert_eq!(&old_bytes[..], &encode(&new)[..]);
    }

    #[test]
    fn a_batch_with_too_many_commands_is_refused_at_the_boundary() {
        let batch = Batch { commands: vec![Command { session: 0, seq: 0, payload: Bytes::new() }; 5] };
        let bytes = encode(&batch);
        assert!(matches!(validate(&bytes, 4), Err(BatchError::TooManyCommands { count: 5, max: 4 })));
        assert!(validate(&bytes, 5).is_ok());
    }

    #[test]
    fn misaligned_bytes_are_validated_but_not_read_in_place() {
        let bytes =
            encode(&Batch { commands: vec![Command { session: 1, seq: 1, payload: Bytes::from_static(&[1, 2, 3]) }] });
        let mut shifted = AlignedVec::<16>::new();
        shifted.extend_from_slice(&[0]);
        shifted.extend_from_slice(&bytes);
        assert!(validate(&shifted[1..], 10).is_ok());
        assert!(view(&shifted[1..]).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// The estimate that sizes the archive's buffer holds, so it is never regrown, and the
        /// archive comes out aligned and readable.
        #[test]
        fn an_archive_fits_the_buffer_sized_for_it(lens in prop::collection::vec(0usize..300, 0..200)) {
            let mut builder = BatchBuilder::new(usize::MAX / 2, usize::MAX);
            for (i, &len) in lens.iter().enumerate() {
                builder.push(Command { session: i as u64, seq: u64::MAX - i as u64, payload: vec![i as u8; len].into() }).unwrap();
            }
            let estimate = archive_bytes_max(&builder.batch);
            let bytes = builder.finish();
            prop_assert!(bytes.len() <= estimate, "{} bytes archived, {} estimated", bytes.len(), estimate);
            prop_assert!(is_aligned(&bytes));
            let batch = view(&bytes).unwrap();
            prop_assert_eq!(batch.commands.len(), lens.len());
            for (i, command) in batch.commands.iter().enumerate() {
                prop_assert_eq!(command.payload.len(), lens[i]);
            }
        }

        #[test]
        fn batches_round_trip(commands in proptest::collection::vec(
            (any::<u64>(), any::<u64>(), proptest::collection::vec(any::<u8>(), 0..64)), 0..20)
        ) {
            let batch = Batch { commands: commands.into_iter().map(|(session, seq, payload)| Command { session, seq, payload: payload.into() }).collect() };
            let bytes = encode(&batch);
            validate(&bytes, 100).unwrap();
            let archived = view(&aligned(&bytes)).map(|a| a.commands.len()).unwrap();
            prop_assert_eq!(archived, batch.commands.len());
            let back: Batch = rkyv::deserialize::<Batch, rancor::Error>(view(&aligned(&bytes)).unwrap()).unwrap();
            prop_assert_eq!(back, batch);
        }

        #[test]
        fn validating_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = validate(&bytes, 1000);
            let _ = view(&aligned(&bytes));
        }

        #[test]
        fn a_flipped_bit_is_refused_or_still_a_valid_batch(
            seed in proptest::collection::vec(any::<u8>(), 1..32), position in any::<prop::sample::Index>(), bit in 0u8..8
        ) {
            let bytes = encode(&Batch { commands: vec![Command { session: 3, seq: 9, payload: seed.into() }] });
            let mut corrupt = aligned(&bytes);
            let at = position.index(corrupt.len());
            corrupt[at] ^= 1 << bit;
            // Either rejected, or readable without any out-of-bounds access: never undefined.
            if validate(&corrupt, 10).is_ok() {
                let b = view(&corrupt).unwrap();
                for c in b.commands.iter() {
                    prop_assert!(c.payload.len() <= corrupt.len());
                }
            }
        }
    }
}
