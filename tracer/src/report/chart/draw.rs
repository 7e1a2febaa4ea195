//! The plotters half of the chart: layout, then one drawing pass per layer.
//!
//! plotters' SVG backend writes flat elements and takes no attributes of
//! ours, so each layer is drawn in a pass of its own, on a fresh backend of
//! the same size with the same layout (hence the same coordinate mapping),
//! and its elements are wrapped in a `<g data-series=…>` carrying its
//! figures. The passes are then put together in drawing order: frame (axes,
//! title), layers bottom to top, legend on top.
use std::fmt::Write;

use plotters::{
    chart::DualCoordChartContext,
    coord::{types::RangedCoordf64, Shift},
    drawing::DrawingAreaErrorKind,
    prelude::*,
    style::text_anchor,
};

use super::{stacked, Layer, Panel, MIB};
use crate::report::svg::bucket_color;

type Error = DrawingAreaErrorKind<std::io::Error>;
type Area<'b> = DrawingArea<SVGBackend<'b>, Shift>;
type Coords = Cartesian2d<RangedCoordf64, RangedCoordf64>;
type Chart<'a, 'b> = DualCoordChartContext<'a, SVGBackend<'b>, Coords, Coords>;

const WIDTH: u32 = 1200;
const LEGEND_WIDTH: i32 = 260;
const PANEL_HEIGHT: i32 = 460;
const TITLE_HEIGHT: i32 = 30;
const FOOTER_HEIGHT: i32 = 24;
const FONT: &str = "sans-serif";

const RSS: RGBColor = RGBColor(0, 0, 0);
/// Darker than the v8_heap area (ColorBrewer Set2 green), so the line shows
/// along its top.
const V8_LINE: RGBColor = RGBColor(27, 120, 55);
const REQUESTS: RGBColor = RGBColor(33, 102, 172);
const KILL: RGBColor = RGBColor(215, 25, 28);

fn line_rgb(layer: Layer) -> RGBColor {
    match layer {
        Layer::V8Heap => V8_LINE,
        Layer::Requests => REQUESTS,
        Layer::Limit | Layer::Kill => KILL,
        _ => RSS,
    }
}

fn bucket_rgb(layer: Layer) -> RGBColor {
    let Layer::Area(b) = layer else {
        return RSS;
    };
    let c = bucket_color(Some(b));
    RGBColor(c.r, c.g, c.b)
}

/// Draws into a fresh SVG document of `size`; returns it and what `f` returned.
fn pass<R>(
    size: (u32, u32),
    f: impl for<'b> FnOnce(&Area<'b>) -> Result<R, Error>,
) -> Result<(String, R), Error> {
    let mut buf = String::new();
    let r = {
        let root = SVGBackend::with_string(&mut buf, size).into_drawing_area();
        let r = f(&root)?;
        root.present()?;
        r
    };
    Ok((buf, r))
}

/// The document without its `<svg …>` line and `</svg>`.
fn body(doc: &str) -> &str {
    let start = doc.find('\n').map_or(0, |i| i + 1);
    let end = doc.rfind("</svg>").unwrap_or(doc.len());
    &doc[start..end.max(start)]
}

/// Panel `i`'s parts: its title strip, the chart, and the legend column to
/// the chart's right (outside it, so it never hides a line).
struct Parts<'b> {
    title: Area<'b>,
    plot: Area<'b>,
    legend: Area<'b>,
}

fn panel_areas<'b>(root: &Area<'b>, i: usize) -> Parts<'b> {
    let (_, below) = root.split_vertically(PANEL_HEIGHT * i as i32);
    let (panel, _) = below.split_vertically(PANEL_HEIGHT);
    let (title, rest) = panel.split_vertically(TITLE_HEIGHT);
    let (plot, legend) = rest.split_horizontally(WIDTH as i32 - LEGEND_WIDTH);
    Parts {
        title,
        plot,
        legend,
    }
}

/// The same layout in every pass: the coordinate mapping depends on it only.
fn chart<'a, 'b>(area: &'a Area<'b>, p: &Panel) -> Result<Chart<'a, 'b>, Error> {
    let right = if p.y2_max > 0.0 { 70 } else { 20 };
    let c = ChartBuilder::on(area)
        .margin(8)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .right_y_label_area_size(right)
        .build_cartesian_2d(p.x.0..p.x.1, 0.0..p.y_max_bytes / MIB)?;
    Ok(c.set_secondary_coord(p.x.0..p.x.1, 0.0..p.y2_max.max(1.0)))
}

/// Pixels the axis ends map to, so that a drawn point reads back as a value.
fn pixel_attrs(c: &Chart, p: &Panel) -> String {
    let (x0, y0) = c.backend_coord(&(p.x.0, 0.0));
    let (x1, y1) = c.backend_coord(&(p.x.1, p.y_max_bytes / MIB));
    let mut s = format!(
        " data-px-x-min=\"{x0}\" data-px-x-max=\"{x1}\" data-px-y-zero=\"{y0}\" data-px-y-max=\"{y1}\""
    );
    if p.y2_max > 0.0 {
        // The secondary axis maps through its own area, which plotters
        // places one pixel apart from the primary's: its own end pixels.
        let right = c.borrow_secondary();
        let (_, zero) = right.backend_coord(&(p.x.1, 0.0));
        let (_, top) = right.backend_coord(&(p.x.1, p.y2_max));
        let _ = write!(s, " data-px-y2-zero=\"{zero}\" data-px-y2-max=\"{top}\"");
    }
    s
}

fn frame(parts: &Parts, p: &Panel, mode: &str) -> Result<String, Error> {
    parts.title.draw_text(
        &p.title(mode),
        &(FONT, 16).into_font().color(&BLACK),
        (10, 8),
    )?;
    let mut c = chart(&parts.plot, p)?;
    c.configure_mesh()
        .x_desc("seconds since tracing started")
        .y_desc("MiB")
        .x_labels(10)
        .y_labels(8)
        .y_label_formatter(&|v| format!("{v:.0}"))
        .max_light_lines(4)
        .light_line_style(RGBColor(240, 240, 240))
        .draw()?;
    if p.y2_max > 0.0 {
        c.configure_secondary_axes()
            .y_desc("requests/s")
            .y_label_formatter(&|v| format!("{v:.0}"))
            .draw()?;
    }
    Ok(pixel_attrs(&c, p))
}

fn mib(b: u64) -> f64 {
    b as f64 / MIB
}

fn layer(plot: &Area, p: &Panel, l: Layer) -> Result<(), Error> {
    let mut c = chart(plot, p)?;
    let line = |color: RGBColor, values: &dyn Fn(&crate::report::SeriesPoint) -> u64| {
        LineSeries::new(
            p.points.iter().map(|s| (s.t_secs, mib(values(s)))),
            color.stroke_width(2),
        )
    };
    match l {
        Layer::Area(b) => {
            let upper = p.points.iter().map(|s| (s.t_secs, mib(stacked(s, b).1)));
            let lower = p
                .points
                .iter()
                .rev()
                .map(|s| (s.t_secs, mib(stacked(s, b).0)));
            let outline: Vec<(f64, f64)> = upper.chain(lower).collect();
            c.draw_series(std::iter::once(Polygon::new(
                outline,
                bucket_rgb(l).filled(),
            )))?;
        }
        Layer::V8Heap => {
            c.draw_series(line(line_rgb(l), &|s| s.buckets.v8_heap))?;
        }
        Layer::Rss => {
            c.draw_series(line(line_rgb(l), &|s| s.rss_bytes))?;
        }
        Layer::Requests => {
            c.draw_secondary_series(LineSeries::new(
                p.requests.iter().copied(),
                REQUESTS.stroke_width(2),
            ))?;
        }
        Layer::Limit => {
            let y = mib(p.kill.as_ref().and_then(|k| k.limit_bytes).unwrap_or(0));
            c.draw_series(DashedLineSeries::new(
                [(p.x.0, y), (p.x.1, y)],
                8,
                5,
                KILL.stroke_width(2),
            ))?;
        }
        Layer::Kill => {
            let t = p.kill.as_ref().map_or(p.x.1, |k| k.t_secs);
            let top = p.y_max_bytes / MIB;
            c.draw_series(std::iter::once(PathElement::new(
                vec![(t, 0.0), (t, top)],
                KILL.stroke_width(2),
            )))?;
            let style = (FONT, 13)
                .into_font()
                .color(&KILL)
                .pos(text_anchor::Pos::new(
                    text_anchor::HPos::Right,
                    text_anchor::VPos::Top,
                ));
            c.draw_series(std::iter::once(Text::new(
                format!("OOM kill at {t:.1} s "),
                (t, top),
                style,
            )))?;
        }
    }
    Ok(())
}

/// The legend column: a swatch and a label per layer, with its unit.
fn legend(area: &Area, p: &Panel) -> Result<(), Error> {
    let font = (FONT, 13).into_font().color(&BLACK);
    for (row, l) in p.layers().into_iter().enumerate() {
        let y = 40 + 22 * row as i32;
        match l {
            Layer::Area(_) => area.draw(&Rectangle::new(
                [(8, y - 6), (28, y + 6)],
                bucket_rgb(l).filled(),
            ))?,
            _ => area.draw(&PathElement::new(
                vec![(8, y), (28, y)],
                line_rgb(l).stroke_width(2),
            ))?,
        }
        area.draw_text(&p.legend(l), &font, (36, y - 7))?;
    }
    Ok(())
}

/// The whole document: a white page, one panel per process, and a last line
/// naming how many processes were left out.
pub fn svg(mode: &str, panels: &[Panel], left_out: usize) -> Result<String, Error> {
    let footer = if left_out > 0 { FOOTER_HEIGHT } else { 0 };
    let size = (WIDTH, (PANEL_HEIGHT * panels.len() as i32 + footer) as u32);
    let (page, ()) = pass(size, |root| {
        root.fill(&WHITE)?;
        if left_out > 0 {
            root.draw_text(
                &format!("… and {left_out} more processes, not drawn (see the JSON report)"),
                &(FONT, 14).into_font().color(&BLACK),
                (10, PANEL_HEIGHT * panels.len() as i32 + 4),
            )?;
        }
        Ok(())
    })?;
    let header_end = page.find('\n').map_or(0, |i| i + 1);
    let mut out = String::with_capacity(page.len() * 4);
    out.push_str(&page[..header_end]);
    out.push_str(body(&page));
    for (i, p) in panels.iter().enumerate() {
        let (frame_doc, px) = pass(size, |root| frame(&panel_areas(root, i), p, mode))?;
        let _ = writeln!(
            out,
            "<g class=\"panel\" data-pid=\"{}\" data-samples=\"{}\" data-x-min-secs=\"{}\" \
             data-x-max-secs=\"{}\" data-y-max-bytes=\"{}\" data-y2-max-per-sec=\"{}\"{px}>",
            p.pid, p.samples, p.x.0, p.x.1, p.y_max_bytes, p.y2_max
        );
        out.push_str(body(&frame_doc));
        for l in p.layers() {
            let (doc, ()) = pass(size, |root| layer(&panel_areas(root, i).plot, p, l))?;
            let _ = write!(out, "<g data-series=\"{}\"", l.name());
            for (k, v) in p.figures(l) {
                let _ = write!(out, " {k}=\"{v}\"");
            }
            out.push_str(">\n");
            out.push_str(body(&doc));
            out.push_str("</g>\n");
        }
        let (doc, ()) = pass(size, |root| legend(&panel_areas(root, i).legend, p))?;
        out.push_str("<g class=\"legend\">\n");
        out.push_str(body(&doc));
        out.push_str("</g>\n</g>\n");
    }
    out.push_str("</svg>\n");
    Ok(out)
}
