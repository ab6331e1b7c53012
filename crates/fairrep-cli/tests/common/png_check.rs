//! Checks of a plot's PNG version: it decodes, it is twice the SVG's size and it is not blank.
use std::collections::HashSet;
use std::path::Path;

/// The `width` and `height` of the SVG's root element.
fn svg_size(svg: &str) -> (f64, f64) {
    let root = &svg[..svg.find('>').expect("an SVG root element")];
    let attr = |name: &str| -> f64 {
        let key = format!(" {name}=\"");
        let at = root
            .find(&key)
            .unwrap_or_else(|| panic!("no {name} in {root}"))
            + key.len();
        let len = root[at..].find('"').unwrap();
        root[at..at + len].parse().unwrap()
    };
    (attr("width"), attr("height"))
}

/// Asserts that the PNG beside `svg_path` (same stem) decodes as an 8-bit RGBA image twice
/// the SVG's size, with a white background and at least `min_colours` distinct colours.
pub(crate) fn assert_png_beside(svg_path: &Path, min_colours: usize) {
    let svg = std::fs::read_to_string(svg_path).unwrap();
    let (width, height) = svg_size(&svg);
    let png_path = svg_path.with_extension("png");
    let bytes = std::fs::read(&png_path)
        .unwrap_or_else(|e| panic!("cannot read `{}`: {e}", png_path.display()));
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .unwrap();
    let mut rgba = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut rgba).unwrap();
    assert_eq!(
        (info.color_type, info.bit_depth),
        (png::ColorType::Rgba, png::BitDepth::Eight)
    );
    assert_eq!(
        (f64::from(info.width), f64::from(info.height)),
        (2.0 * width, 2.0 * height),
        "`{}`",
        png_path.display()
    );
    rgba.truncate(info.buffer_size());
    let pixels: Vec<[u8; 4]> = rgba
        .chunks_exact(4)
        .map(|p| [p[0], p[1], p[2], p[3]])
        .collect();
    assert_eq!(pixels[0], [255, 255, 255, 255], "white background");
    let colours: HashSet<[u8; 4]> = pixels.iter().copied().collect();
    assert!(
        colours.len() >= min_colours,
        "`{}`: {} distinct colours",
        png_path.display(),
        colours.len()
    );
    let inked = pixels
        .iter()
        .filter(|p| **p != [255, 255, 255, 255])
        .count();
    assert!(
        inked * 100 >= pixels.len(),
        "`{}`: only {inked} of {} pixels drawn",
        png_path.display(),
        pixels.len()
    );
}
