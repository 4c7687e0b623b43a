mod support;
use futures_util::stream::{self, StreamExt};
use keyshift_engine::api::*;
use keyshift_engine::keys::LegacyPositionsKey;
use keyshift_engine::plan::Side;
use keyshift_engine::verify::latest_run;
use keyshift_harness::gate::checks;
use keyshift_harness::seed::{self, generate, GenConfig};
use support::{exchanges, redis};

async fn bench<S: PositionStore>(name: &str, s: &S, users: &[LegacyPositionsKey]) {
    let t = std::time::Instant::now();
    let n: usize = stream::iter(users)
        .map(|u| async move {
            let ps = s.all_positions(&u.user_id, &u.exchange).await.unwrap();
            let mut k = 1;
            for p in &ps {
                s.position_size(&u.user_id, &u.exchange, &p.inst_id).await.unwrap();
                s.get_position(&u.user_id, &u.exchange, &p.inst_id, Side::Long).await.unwrap();
                k += 2;
            }
            k
        })
        .buffer_unordered(64)
        .fold(0, |a, b| async move { a + b })
        .await;
    let el = t.elapsed();
    eprintln!("{name}: {n} calls in {el:?} = {:.0}/s", n as f64 / el.as_secs_f64());
}

#[tokio::test(flavor = "multi_thread")]
async fn time_api() {
    let users: usize = std::env::var("N").ok().and_then(|v| v.parse().ok()).unwrap_or(20000);
    let g = generate(&GenConfig { users, seed: 7, ..GenConfig::default() });
    let (old, new) = (redis().await, redis().await);
    let mut o = old.conn.clone();
    let mut n = new.conn.clone();
    seed::load(&mut o, &g.keyspace).await.unwrap();
    seed::load(&mut n, &g.keyspace).await.unwrap();
    new.migrate().await;
    let run = latest_run(&new.conn).await.unwrap();
    let outcomes = checks::read_outcomes(&new.conn, &run.run_id).await.unwrap();
    let us: Vec<LegacyPositionsKey> = outcomes.keys().filter_map(|k| LegacyPositionsKey::parse(k, &exchanges())).collect();
    bench("legacy", &LegacyStore::new(old.conn.clone()), &us).await;
    bench("hash", &HashStore::new(new.conn.clone()), &us).await;
    bench("dual", &DualReadStore::new(new.conn.clone()), &us).await;
    let t = std::time::Instant::now();
    let e = checks::api(&old.conn, &new.conn, &outcomes, &exchanges()).await.unwrap();
    eprintln!("api over {} outcomes: {:?} processed {} status {:?}", outcomes.len(), t.elapsed(), e.processed, e.status);
}
