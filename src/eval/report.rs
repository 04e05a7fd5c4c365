//! Sweep results as JSON, a Markdown table and PNG line plots (score against cache size, one
//! line per policy, as in the paper's figures).

use std::path::Path;

use crate::error::{Error, Result};
use crate::eval::sweep::{PerplexityResult, SummaryResult};
use crate::kv::policy::Policy;

/// Line colour of each policy in the plots (also listed in the Markdown).
pub fn color(p: Policy) -> [u8; 3] {
    match p {
        Policy::Full => [120, 120, 120],
        Policy::Window => [220, 50, 47],
        Policy::Streaming => [240, 150, 30],
        Policy::H2o => [38, 110, 210],
        Policy::Keyformer => [40, 160, 60],
    }
}

fn color_name(p: Policy) -> &'static str {
    match p {
        Policy::Full => "grey",
        Policy::Window => "red",
        Policy::Streaming => "orange",
        Policy::H2o => "blue",
        Policy::Keyformer => "green",
    }
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

fn json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string_pretty(value).map_err(|e| Error::InvalidInput(e.to_string()))
}

/// Mean of `value` over the results of one (policy, ratio); the full cache counts at every ratio.
fn mean(results: &[SummaryResult], p: Policy, r: f32, value: fn(&SummaryResult) -> f64) -> f64 {
    let cell: Vec<f64> = results
        .iter()
        .filter(|x| x.policy == p && (p == Policy::Full || x.kv_ratio == Some(r)))
        .map(value)
        .collect();
    cell.iter().sum::<f64>() / cell.len().max(1) as f64
}

fn policies_in(results: &[SummaryResult]) -> Vec<Policy> {
    Policy::ALL
        .into_iter()
        .filter(|p| results.iter().any(|x| x.policy == *p))
        .collect()
}

/// (table title, file stem, value of one result).
type Metric = (&'static str, &'static str, fn(&SummaryResult) -> f64);

pub fn write_summaries(results: &[SummaryResult], ratios: &[f32], dir: &Path) -> Result<String> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    write(&dir.join("summaries.json"), &json(&results)?)?;
    let policies = policies_in(results);
    let docs = results.iter().filter(|x| x.policy == Policy::Full).count();
    let metrics: [Metric; 4] = [
        (
            "ROUGE-L vs reference summary",
            "rouge_l_vs_reference",
            |x| x.vs_reference.rouge_l,
        ),
        (
            "ROUGE-2 vs reference summary",
            "rouge_2_vs_reference",
            |x| x.vs_reference.rouge2,
        ),
        ("ROUGE-L vs full-cache output", "rouge_l_vs_full", |x| {
            x.vs_full.rouge_l
        }),
        ("ROUGE-2 vs full-cache output", "rouge_2_vs_full", |x| {
            x.vs_full.rouge2
        }),
    ];
    let mut md = format!(
        "Mean over {docs} documents; columns are the KV cache as a fraction of the prompt.\n"
    );
    for (title, file, value) in metrics {
        let series: Series = policies
            .iter()
            .map(|&p| {
                let points = ratios
                    .iter()
                    .map(|&r| (r as f64, mean(results, p, r, value)))
                    .collect();
                (p, points)
            })
            .collect();
        md += &format!("\n### {title}\n\n{}", table(ratios, &series, 4));
        plot(&dir.join(format!("{file}.png")), &series)?;
    }
    md += &legend(&policies);
    write(&dir.join("summaries.md"), &md)?;
    Ok(md)
}

pub fn write_perplexity(
    results: &[PerplexityResult],
    ratios: &[f32],
    dir: &Path,
) -> Result<String> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    write(&dir.join("perplexity.json"), &json(&results)?)?;
    let policies: Vec<Policy> = Policy::ALL
        .into_iter()
        .filter(|p| results.iter().any(|x| x.policy == *p))
        .collect();
    let at = |p: Policy, r: f32| {
        results
            .iter()
            .find(|x| x.policy == p && (p == Policy::Full || x.kv_ratio == Some(r)))
    };
    let tokens = results.first().map_or(0, |x| x.tokens);
    let series: Series = policies
        .iter()
        .map(|&p| {
            let points = ratios
                .iter()
                .filter_map(|&r| at(p, r).map(|x| (r as f64, x.perplexity)))
                .collect();
            (p, points)
        })
        .collect();
    let mut md = format!(
        "Streaming perplexity over {tokens} tokens fed one at a time; columns are the cache budget as a fraction of the text.\n\n{}",
        table(ratios, &series, 3)
    );
    plot(&dir.join("perplexity.png"), &series)?;
    md += &legend(&policies);
    write(&dir.join("perplexity.md"), &md)?;
    Ok(md)
}

/// One line of (cache fraction, value) points per policy.
type Series = Vec<(Policy, Vec<(f64, f64)>)>;

/// A Markdown table: a column per ratio, a row per policy, values to `decimals` places.
fn table(ratios: &[f32], series: &Series, decimals: usize) -> String {
    let header: Vec<String> = ratios.iter().map(|r| r.to_string()).collect();
    let mut md = format!(
        "| policy | {} |\n|---|{}\n",
        header.join(" | "),
        "---|".repeat(ratios.len())
    );
    for (p, points) in series {
        let cells: Vec<String> = points
            .iter()
            .map(|(_, y)| format!("{y:.decimals$}"))
            .collect();
        md += &format!("| {} | {} |\n", p.name(), cells.join(" | "));
    }
    md
}

fn legend(policies: &[Policy]) -> String {
    let names: Vec<String> = policies
        .iter()
        .map(|p| format!("{} {}", p.name(), color_name(*p)))
        .collect();
    format!("\nPlot colours: {}.\n", names.join(", "))
}

/// A line plot: x (cache fraction) across, y down the axis scaled to the data, one coloured
/// line with square markers per policy, grey axes with a tick at every x value.
fn plot(path: &Path, series: &Series) -> Result<()> {
    let (w, h, m) = (640usize, 400usize, 30usize);
    let points = series.iter().flat_map(|s| s.1.iter());
    let (x0, x1) = points
        .clone()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (y0, y1) = points
        .clone()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let (y0, y1) = if y1 > y0 {
        (y0 - 0.05 * (y1 - y0), y1 + 0.05 * (y1 - y0))
    } else {
        (y0 - 1.0, y1 + 1.0)
    };
    let x1 = if x1 > x0 { x1 } else { x0 + 1.0 };
    let to_px = |(x, y): (f64, f64)| {
        let px = m as f64 + (x - x0) / (x1 - x0) * (w - 2 * m) as f64;
        let py = (h - m) as f64 - (y - y0) / (y1 - y0) * (h - 2 * m) as f64;
        (px.round() as i64, py.round() as i64)
    };
    let mut img = vec![255u8; w * h * 3];
    let mut put = |x: i64, y: i64, c: [u8; 3]| {
        if x >= 0 && y >= 0 && (x as usize) < w && (y as usize) < h {
            let i = (y as usize * w + x as usize) * 3;
            img[i..i + 3].copy_from_slice(&c);
        }
    };
    let grey = [160, 160, 160];
    for x in m..w - m {
        put(x as i64, (h - m) as i64, grey);
    }
    for y in m..h - m {
        put(m as i64, y as i64, grey);
    }
    for (_, pts) in series {
        for &(x, _) in pts {
            let (px, _) = to_px((x, y0));
            for d in 0..6 {
                put(px, (h - m + d) as i64, grey);
            }
        }
    }
    for (p, pts) in series {
        let c = color(*p);
        for pair in pts.windows(2) {
            let (a, b) = (to_px(pair[0]), to_px(pair[1]));
            let steps = (b.0 - a.0).abs().max((b.1 - a.1).abs()).max(1);
            for s in 0..=steps {
                let x = a.0 + (b.0 - a.0) * s / steps;
                let y = a.1 + (b.1 - a.1) * s / steps;
                for d in -1..=1 {
                    put(x, y + d, c);
                }
            }
        }
        for &pt in pts {
            let (x, y) = to_px(pt);
            for dx in -3..=3 {
                for dy in -3..=3 {
                    put(x + dx, y + dy, c);
                }
            }
        }
    }
    let io = |e: std::io::Error| Error::io(path, e);
    let file = std::fs::File::create(path).map_err(io)?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), w as u32, h as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let to_io = |e: png::EncodingError| io(std::io::Error::other(e));
    encoder
        .write_header()
        .map_err(to_io)?
        .write_image_data(&img)
        .map_err(to_io)?;
    Ok(())
}
