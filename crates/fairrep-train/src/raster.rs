//! PNG versions of the SVG plots: the SVG the plot writers produce ([`crate::plot`], the
//! sweep's front plot, the audits' trade-off plots) rendered by `resvg`, so the PNG is the same
//! picture, at [`PNG_SCALE`] pixels per SVG unit, written atomically beside the SVG with the
//! same stem.
//!
//! Why `resvg`: it is the maintained pure-Rust SVG renderer (linebender), with no system
//! libraries, and rendering our own SVG keeps one drawing code for both formats. The text is
//! drawn with a font embedded in the binary (Ubuntu Light, from egui's `epaint_default_fonts`,
//! under the Ubuntu Font Licence) and every generic family (`sans-serif`, `serif`, ...) maps to
//! it, so a machine without installed fonts (a CI container) draws the same text and no
//! system font is ever looked up. The font has one weight: bold titles are drawn light.
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use fairrep_data::fs::{self as fsutil, FsError};
use resvg::tiny_skia::{Pixmap, Transform};
use resvg::usvg::{self, fontdb};

/// PNG pixels per SVG user unit (the PNG is twice the SVG's size).
pub const PNG_SCALE: f32 = 2.0;

/// The longest side of a PNG, in pixels: a wider plot is drawn at a smaller scale.
pub const MAX_PNG_SIDE: u32 = 8192;

/// Why a PNG was not made or not written.
#[derive(Debug, thiserror::Error)]
pub enum RasterError {
    /// The SVG does not parse.
    #[error("the SVG cannot be read: {message}")]
    Svg {
        /// The parser's message.
        message: String,
    },
    /// The SVG's size gives no image (zero or not finite).
    #[error("the SVG's size {width} x {height} gives no image")]
    Size {
        /// The SVG's width, in its units.
        width: f32,
        /// The SVG's height, in its units.
        height: f32,
    },
    /// The embedded font cannot be loaded.
    #[error("the embedded font cannot be loaded")]
    Font,
    /// The PNG encoder failed.
    #[error("cannot encode the PNG: {message}")]
    Encode {
        /// The encoder's message.
        message: String,
    },
    /// The PNG file cannot be written.
    #[error(transparent)]
    Fs(#[from] FsError),
}

/// The font database: the embedded font alone, every generic family mapped to it, and that
/// family's name (the default family for text that names none).
struct Fonts {
    db: Arc<fontdb::Database>,
    family: String,
}

fn fonts() -> Option<&'static Fonts> {
    static FONTS: OnceLock<Option<Fonts>> = OnceLock::new();
    FONTS
        .get_or_init(|| {
            let mut db = fontdb::Database::new();
            db.load_font_data(epaint_default_fonts::UBUNTU_LIGHT.to_vec());
            let family = db.faces().next()?.families.first()?.0.clone();
            db.set_sans_serif_family(family.clone());
            db.set_serif_family(family.clone());
            db.set_monospace_family(family.clone());
            db.set_cursive_family(family.clone());
            db.set_fantasy_family(family.clone());
            Some(Fonts {
                db: Arc::new(db),
                family,
            })
        })
        .as_ref()
}

/// The PNG file beside an SVG file: the same path with the extension `png`.
pub fn png_path(svg_path: &Path) -> PathBuf {
    svg_path.with_extension("png")
}

/// Renders `svg` as PNG bytes, at [`PNG_SCALE`] pixels per SVG unit (less where that would
/// exceed [`MAX_PNG_SIDE`]), with the embedded font.
pub fn png_from_svg(svg: &str) -> Result<Vec<u8>, RasterError> {
    let fonts = fonts().ok_or(RasterError::Font)?;
    let options = usvg::Options {
        font_family: fonts.family.clone(),
        fontdb: Arc::clone(&fonts.db),
        ..usvg::Options::default()
    };
    let tree = usvg::Tree::from_str(svg, &options).map_err(|e| RasterError::Svg {
        message: e.to_string(),
    })?;
    let size = tree.size();
    let (width, height) = (size.width(), size.height());
    let side = width.max(height);
    let scale = PNG_SCALE.min(MAX_PNG_SIDE as f32 / side);
    let pixels = |v: f32| (v * scale).ceil().clamp(0.0, MAX_PNG_SIDE as f32) as u32;
    let mut pixmap = Pixmap::new(pixels(width), pixels(height))
        .filter(|_| side.is_finite() && side > 0.0)
        .ok_or(RasterError::Size { width, height })?;
    resvg::render(
        &tree,
        Transform::from_scale(scale, scale),
        &mut pixmap.as_mut(),
    );
    pixmap.encode_png().map_err(|e| RasterError::Encode {
        message: e.to_string(),
    })
}

/// Renders `svg` and writes it atomically to [`png_path`]`(svg_path)`; returns that path.
/// The SVG file itself is neither read nor touched.
pub fn write_png_beside(svg_path: &Path, svg: &str) -> Result<PathBuf, RasterError> {
    let bytes = png_from_svg(svg)?;
    let path = png_path(svg_path);
    fsutil::write_atomic(&path, &bytes)?;
    Ok(path)
}

/// A plot's PNG version, as made by [`PngFile::beside`]: written, or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PngFile {
    /// Written at this path.
    Written(PathBuf),
    /// Not written: the path it would have had, and why.
    Failed {
        /// The PNG's path.
        path: PathBuf,
        /// Why it was not written.
        message: String,
    },
}

impl PngFile {
    /// [`write_png_beside`], its error kept as a value: a plot whose PNG fails keeps its SVG
    /// and the results beside it, and the caller reports the failure.
    pub fn beside(svg_path: &Path, svg: &str) -> Self {
        match write_png_beside(svg_path, svg) {
            Ok(path) => Self::Written(path),
            Err(e) => Self::Failed {
                path: png_path(svg_path),
                message: e.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plot::{Chart, Series, render};

    struct Image {
        width: u32,
        height: u32,
        /// RGBA, row-major.
        rgba: Vec<u8>,
    }

    impl Image {
        fn pixel(&self, x: u32, y: u32) -> [u8; 4] {
            let i = 4 * (y as usize * self.width as usize + x as usize);
            [
                self.rgba[i],
                self.rgba[i + 1],
                self.rgba[i + 2],
                self.rgba[i + 3],
            ]
        }

        /// The pixels of the rectangle `[x0, x1) x [y0, y1)` (PNG pixels) that are not white.
        fn inked(&self, (x0, x1): (u32, u32), (y0, y1): (u32, u32)) -> usize {
            (y0..y1)
                .flat_map(|y| (x0..x1).map(move |x| (x, y)))
                .filter(|&(x, y)| self.pixel(x, y) != [255, 255, 255, 255])
                .count()
        }
    }

    fn decode(bytes: &[u8]) -> Image {
        let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .unwrap();
        let mut rgba = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut rgba).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgba);
        assert_eq!(info.bit_depth, png::BitDepth::Eight);
        rgba.truncate(info.buffer_size());
        Image {
            width: info.width,
            height: info.height,
            rgba,
        }
    }

    fn chart() -> Chart {
        Chart {
            title: "loss".into(),
            x_label: "epoch".into(),
            series: vec![
                Series {
                    label: "train".into(),
                    points: vec![(1.0, 0.7), (2.0, 0.5), (3.0, 0.45), (4.0, 0.4)],
                },
                Series {
                    label: "valid".into(),
                    points: vec![(1.0, 0.8), (2.0, 0.6), (3.0, 0.55), (4.0, 0.5)],
                },
            ],
        }
    }

    /// `svg` without its `<text>` elements (one per line in the plot writers' output).
    fn without_text(svg: &str) -> String {
        svg.lines()
            .map(|line| match line.find("<text") {
                Some(at) => {
                    let end = line[at..]
                        .find("</text>")
                        .map_or(line.len(), |e| at + e + 7);
                    format!("{}{}", &line[..at], &line[end..])
                }
                None => line.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn the_png_is_the_svg_at_twice_its_size_with_its_colours_and_its_text() {
        let svg = render(&[chart(), chart()]);
        let image = decode(&png_from_svg(&svg).unwrap());
        // Two panels of 460 x 300 SVG units.
        assert_eq!((image.width, image.height), (1840, 600));
        // The background is white, the series blue and red, the frame and grid grey.
        assert_eq!(image.pixel(2, 2), [255, 255, 255, 255]);
        let colours: std::collections::HashSet<[u8; 4]> = image
            .rgba
            .chunks_exact(4)
            .map(|p| [p[0], p[1], p[2], p[3]])
            .collect();
        assert!(colours.len() >= 8, "{} distinct colours", colours.len());
        for rgb in [[0x1f, 0x77, 0xb4], [0xd6, 0x27, 0x28]] {
            assert!(
                colours.contains(&[rgb[0], rgb[1], rgb[2], 255]),
                "series colour {rgb:?} not drawn"
            );
        }
        // The x label "epoch" of the first panel is centred at x = 62 + 382 / 2 = 253, on the
        // baseline y = 300 - 8 = 292, 12 units high: PNG pixels [466, 546) x [560, 590).
        let label = ((466, 546), (560, 590));
        assert!(image.inked(label.0, label.1) > 40);
        // Without the text elements, that region is blank and the picture differs.
        let bare = decode(&png_from_svg(&without_text(&svg)).unwrap());
        assert_eq!((bare.width, bare.height), (image.width, image.height));
        assert_eq!(bare.inked(label.0, label.1), 0);
        let differing = image
            .rgba
            .chunks_exact(4)
            .zip(bare.rgba.chunks_exact(4))
            .filter(|(a, b)| a != b)
            .count();
        assert!(differing > 1000, "{differing} pixels differ");
    }

    #[test]
    fn every_font_family_resolves_to_the_embedded_font() {
        let text = |family: &str| {
            format!(
                r#"<svg xmlns="http://www.w3.org/2000/svg" width="200" height="40"><rect width="100%" height="100%" fill="white"/><text x="10" y="30" font-size="20" font-family="{family}">fairrep 0.123</text></svg>"#
            )
        };
        let reference = decode(&png_from_svg(&text("sans-serif")).unwrap());
        assert!(reference.inked((0, 400), (0, 80)) > 200);
        for family in ["serif", "monospace", "cursive", "fantasy", "No Such Font"] {
            let image = decode(&png_from_svg(&text(family)).unwrap());
            assert_eq!(image.rgba, reference.rgba, "family `{family}`");
        }
    }

    #[test]
    fn a_wide_plot_is_drawn_at_a_smaller_scale() {
        let svg = r#"<svg xmlns="http://www.w3.org/2000/svg" width="10000" height="100"><rect width="100%" height="100%" fill="white"/></svg>"#;
        let image = decode(&png_from_svg(svg).unwrap());
        assert_eq!((image.width, image.height), (MAX_PNG_SIDE, 82));
    }

    #[test]
    fn bad_svg_is_an_error_not_a_panic() {
        assert!(matches!(png_from_svg("<svg"), Err(RasterError::Svg { .. })));
        assert!(matches!(
            png_from_svg("not an svg at all"),
            Err(RasterError::Svg { .. })
        ));
        let empty = r#"<svg xmlns="http://www.w3.org/2000/svg" width="0" height="10"></svg>"#;
        assert!(png_from_svg(empty).is_err());
    }

    #[test]
    fn the_png_is_written_beside_the_svg_and_a_failed_write_leaves_no_file() {
        let dir = std::env::temp_dir().join(format!("fairrep-raster-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let svg_path = dir.join("curves.svg");
        let svg = render(&[chart()]);
        std::fs::write(&svg_path, &svg).unwrap();
        let written = write_png_beside(&svg_path, &svg).unwrap();
        assert_eq!(written, dir.join("curves.png"));
        let image = decode(&std::fs::read(&written).unwrap());
        assert_eq!((image.width, image.height), (920, 600));
        // The SVG is untouched and no temporary file is left.
        assert_eq!(std::fs::read_to_string(&svg_path).unwrap(), svg);
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["curves.png", "curves.svg"]);
        // A directory that does not exist: an error naming the file, no panic.
        let missing = dir.join("missing").join("front.svg");
        let err = write_png_beside(&missing, &svg).unwrap_err();
        assert!(matches!(err, RasterError::Fs(_)));
        assert!(err.to_string().contains("front.png"), "{err}");
        // A bad SVG writes nothing; the failure is a value naming the file.
        assert!(write_png_beside(&dir.join("bad.svg"), "<svg").is_err());
        assert!(!dir.join("bad.png").exists());
        match PngFile::beside(&dir.join("bad.svg"), "<svg") {
            PngFile::Failed { path, message } => {
                assert_eq!(path, dir.join("bad.png"));
                assert!(message.contains("SVG"), "{message}");
            }
            other => panic!("expected a failure, got {other:?}"),
        }
        assert!(!dir.join("bad.png").exists());
        assert_eq!(
            PngFile::beside(&svg_path, &svg),
            PngFile::Written(dir.join("curves.png"))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
