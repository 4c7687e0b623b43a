//! Times a raw RESP file piped to a server, as the benchmark times its
//! floors: `cargo run --release -p keyshift-harness --example pipe_time -- PORT FILE`.

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let port: u16 = args[0].parse().expect("PORT");
    let resp = std::fs::read(&args[1])?;
    let started = std::time::Instant::now();
    let outcome = keyshift_harness::bench::pipe::pipe(port, &resp)?;
    println!(
        "{:.2} s, {} replies, {} errors",
        started.elapsed().as_secs_f64(),
        outcome.replies,
        outcome.errors
    );
    Ok(())
}
