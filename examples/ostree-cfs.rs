//! The cost of a deployment's `.ostree.cfs` alone, for scripts/bench/composefs.sh: reads an
//! image's tree once (not timed), then builds the composefs tree of its commit and writes the
//! image ROUNDS times, printing the median seconds.
//!
//! usage: ostree-cfs IMAGE_REF OUT_DIR ROUNDS

use std::time::Instant;

use kiln::ostree;
use kiln::progress::Progress;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [reference, out, rounds] = args.as_slice() else { anyhow::bail!("usage: ostree-cfs IMAGE_REF OUT_DIR ROUNDS") };
    let image = kiln::image::Image::open(reference, &Default::default())?;
    image.fetch_layers(&Progress::quiet())?;
    // Distinct content keys stand in for the objects' checksums.
    let scan = kiln::tree::scan::scan(&image, &|_| false, &Progress::quiet())?;
    let (root, _) = ostree::convert(scan.root)?;
    let mut times = Vec::new();
    for i in 0..rounds.parse::<usize>()? {
        let dir = std::path::Path::new(out).join(format!("round-{i}"));
        std::fs::create_dir_all(&dir)?;
        // The writer consumes its tree: each round takes a copy, made before the clock starts.
        let tree = root.clone();
        let start = Instant::now();
        ostree::composefs::write_image(&dir, tree, None)?;
        times.push(start.elapsed().as_secs_f64());
        std::fs::remove_dir_all(&dir)?;
    }
    times.sort_by(f64::total_cmp);
    println!("{:.3}", times[times.len() / 2]);
    Ok(())
}
