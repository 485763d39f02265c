//! Reduced images and template composition for Stockade (patent JP H11-73391, claims 6, 7, 14,
//! 15; Fig. 12): the service keeps a reduced image of every stored image and template; a client
//! composes a preview from reduced images, and the full result from the full-size user image
//! and template that the stock server(s) pushed.
//!
//! - `decode`: EXIF orientation, ICC → sRGB (`colour`), JPEG decode-time (DCT) scaling;
//! - `reduce`: the reduced image (long side configurable, Lanczos3 with `fast_image_resize`);
//! - `geometry`: the one placement function on normalised coordinates;
//! - `compose`: the masked, alpha-blended composition used for both preview and full result;
//! - `quality`: PSNR; `synth`: images made in code for tests, benchmarks and docs.

pub mod colour;
pub mod compose;
pub mod decode;
pub mod geometry;
pub mod quality;
pub mod reduce;
pub mod resize;
pub mod synth;

pub use colour::Colour;
pub use compose::{compose, Composed};
pub use decode::{decode_bytes, decode_file, DecodeError, Decoded, Limits};
pub use geometry::{place, Fit, NormRect, Placement, Slot, SlotError};
pub use reduce::{reduce_bytes, reduce_file, Reduced, DEFAULT_LONG_SIDE};
