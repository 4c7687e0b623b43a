//! OKX v5 position objects as compact JSON text, written directly (no
//! intermediate `serde_json::Value`) so 100,000 users generate fast.
//! Every value the generator writes is from a fixed alphabet (digits,
//! letters, `-`, `.`), so no string needs escaping.

use std::fmt::Write;

use rand::RngExt;

/// A tradable instrument with a plausible price level.
pub(crate) struct Market {
    pub inst_id: &'static str,
    pub inst_type: &'static str,
    px: f64,
    /// Price decimals.
    dp: u32,
    /// Contract value: base currency (linear) or USD (inverse).
    ct_val: f64,
    /// Coin-margined (ccy is the base coin).
    inverse: bool,
    ccy: &'static str,
}

const fn m(inst_id: &'static str, px: f64, dp: u32, ct_val: f64) -> Market {
    Market {
        inst_id,
        inst_type: "SWAP",
        px,
        dp,
        ct_val,
        inverse: false,
        ccy: "USDT",
    }
}

pub(crate) const MARKETS: &[Market] = &[
    m("BTC-USDT-SWAP", 97_250.0, 1, 0.01),
    m("ETH-USDT-SWAP", 3_412.0, 2, 0.1),
    m("SOL-USDT-SWAP", 186.4, 2, 1.0),
    m("XRP-USDT-SWAP", 2.318, 4, 100.0),
    m("DOGE-USDT-SWAP", 0.3217, 5, 1000.0),
    m("ADA-USDT-SWAP", 0.9513, 4, 100.0),
    m("LINK-USDT-SWAP", 22.41, 3, 1.0),
    m("AVAX-USDT-SWAP", 38.12, 2, 1.0),
    m("TON-USDT-SWAP", 5.412, 3, 1.0),
    m("SUI-USDT-SWAP", 4.187, 4, 1.0),
    Market {
        inst_id: "BTC-USD-SWAP",
        inst_type: "SWAP",
        px: 97_240.0,
        dp: 1,
        ct_val: 100.0,
        inverse: true,
        ccy: "BTC",
    },
    Market {
        inst_id: "ETH-USD-SWAP",
        inst_type: "SWAP",
        px: 3_411.0,
        dp: 2,
        ct_val: 10.0,
        inverse: true,
        ccy: "ETH",
    },
    Market {
        inst_id: "BTC-USDT-250627",
        inst_type: "FUTURES",
        px: 98_910.0,
        dp: 1,
        ct_val: 0.01,
        inverse: false,
        ccy: "USDT",
    },
];

const LEVERS: [u32; 11] = [1, 2, 3, 5, 10, 15, 20, 25, 50, 75, 100];
/// Float JSON numbers as an application might have stored them; the
/// last two test that a migration keeps a number's exact text.
const FEE_RATES: [&str; 6] = ["0.0005", "0.0002", "-0.0001", "3.5", "1.0", "2.5e-5"];

/// What one generated position is meant to be.
#[derive(Clone, Copy)]
pub(crate) struct PosSpec {
    pub market: usize,
    /// Net-mode account (`posSide` "net", signed `pos`) or long/short mode.
    pub net_mode: bool,
    /// The side the position is on: true = short.
    pub short: bool,
    pub closed: bool,
    /// Leave `instId` out (a malformed value).
    pub drop_inst_id: bool,
}

/// A compact JSON object being appended to a buffer.
struct Obj<'a>(&'a mut String, bool);

impl Obj<'_> {
    fn key(&mut self, k: &str) {
        self.0.push(if self.1 { ',' } else { '{' });
        self.1 = true;
        self.0.push('"');
        self.0.push_str(k);
        self.0.push_str("\":");
    }
    fn s(&mut self, k: &str, v: &str) {
        self.key(k);
        self.0.push('"');
        self.0.push_str(v);
        self.0.push('"');
    }
    /// A decimal string with `dp` decimals, as OKX sends numbers.
    fn n(&mut self, k: &str, v: f64, dp: u32) {
        self.key(k);
        self.0.push('"');
        fixed(self.0, v, dp);
        self.0.push('"');
    }
    fn raw(&mut self, k: &str, json: &str) {
        self.key(k);
        self.0.push_str(json);
    }
    fn finish(self) {
        self.0.push('}');
    }
}

/// Fixed-point formatting through integers: fast and exact.
pub(crate) fn fixed(out: &mut String, v: f64, dp: u32) {
    let scale = 10u64.pow(dp);
    let n = (v * scale as f64).round() as i64;
    if n < 0 {
        out.push('-');
    }
    let a = n.unsigned_abs();
    let _ = write!(out, "{}", a / scale);
    if dp > 0 {
        let _ = write!(out, ".{:0w$}", a % scale, w = dp as usize);
    }
}

fn id18(rng: &mut impl RngExt) -> String {
    rng.random_range(500_000_000_000_000_000u64..999_999_999_999_999_999)
        .to_string()
}

/// One OKX v5 position object as compact JSON text.
pub(crate) fn position_json(rng: &mut impl RngExt, p: PosSpec) -> String {
    let mut out = String::with_capacity(700);
    position_into(&mut out, rng, p);
    out
}

/// Positions as a JSON array, or as an object keyed by instId.
pub(crate) fn positions_json(
    rng: &mut impl RngExt,
    specs: &[PosSpec],
    object_shaped: bool,
) -> String {
    let mut out = String::with_capacity(2 + specs.len() * 720);
    out.push(if object_shaped { '{' } else { '[' });
    for (i, s) in specs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        if object_shaped {
            out.push('"');
            out.push_str(MARKETS[s.market].inst_id);
            out.push_str("\":");
        }
        position_into(&mut out, rng, *s);
    }
    out.push(if object_shaped { '}' } else { ']' });
    out
}

/// One position written in OKX's field order. The random draws happen in
/// a fixed order (the numbers first, then field by field), so a seed
/// gives the same text every time.
fn position_into(out: &mut String, rng: &mut impl RngExt, p: PosSpec) {
    let d = Draw::new(rng, p);
    let mut o = Obj(out, false);
    d.identity_and_size(&mut o, rng);
    d.prices(&mut o, rng);
    d.margin_and_accounting(&mut o, rng);
    d.optional_fields(&mut o, rng);
    o.finish();
}

/// The numbers behind one position, drawn before any field is written.
struct Draw {
    p: PosSpec,
    mk: &'static Market,
    qty: f64,
    /// -1 for a short position, 1 for a long one.
    dir: f64,
    lever: u32,
    isolated: bool,
    mark: f64,
    avg: f64,
    last: f64,
    notional_usd: f64,
    upl: f64,
    /// Initial margin, in the margin currency.
    im: f64,
    /// Decimals of amounts in the margin currency.
    ccy_dp: u32,
    c_time: u64,
    u_time: u64,
}

impl Draw {
    fn new(rng: &mut impl RngExt, p: PosSpec) -> Draw {
        let mk = &MARKETS[p.market];
        let qty: f64 = if rng.random_bool(0.8) {
            rng.random_range(1..=300) as f64
        } else {
            rng.random_range(1..=999) as f64 / 10.0
        };
        let qty = if p.closed { 0.0 } else { qty };
        let dir = if p.short { -1.0 } else { 1.0 };
        let lever = LEVERS[rng.random_range(0..LEVERS.len())];
        let isolated = rng.random_bool(0.4);
        let mark = mk.px * (1.0 + rng.random_range(-0.01..0.01));
        let avg = mk.px * (1.0 + rng.random_range(-0.08..0.08));
        let last = mark * (1.0 + rng.random_range(-0.0005..0.0005));
        let (notional_usd, upl, im) = if mk.inverse {
            let n = qty * mk.ct_val;
            (
                n,
                (1.0 / avg - 1.0 / mark) * n * dir,
                n / lever as f64 / mark,
            )
        } else {
            let n = qty * mk.ct_val * mark;
            (n, (mark - avg) * qty * mk.ct_val * dir, n / lever as f64)
        };
        let c_time: u64 = rng.random_range(1_704_067_200_000..1_748_736_000_000);
        let u_time = c_time + rng.random_range(1_000..30 * 86_400_000);
        Draw {
            p,
            mk,
            qty,
            dir,
            lever,
            isolated,
            mark,
            avg,
            last,
            notional_usd,
            upl,
            im,
            ccy_dp: if mk.inverse { 8 } else { 4 },
            c_time,
            u_time,
        }
    }

    /// instType, instId (unless dropped), posSide, pos, posId, mgnMode.
    fn identity_and_size(&self, o: &mut Obj, rng: &mut impl RngExt) {
        let (p, mk, qty) = (self.p, self.mk, self.qty);
        o.s("instType", mk.inst_type);
        if !p.drop_inst_id {
            o.s("instId", mk.inst_id);
        }
        let (pos_side, pos) = match (p.net_mode, p.short) {
            // Net mode: signed pos; a few legacy entries carry no posSide at all.
            (true, _) => (rng.random_bool(0.97).then_some("net"), qty * self.dir),
            // Long/short mode: pos is positive on both sides; "any case".
            (false, false) => (
                Some(if rng.random_bool(0.97) {
                    "long"
                } else {
                    "LONG"
                }),
                qty,
            ),
            (false, true) => (
                Some(if rng.random_bool(0.97) {
                    "short"
                } else {
                    "Short"
                }),
                qty,
            ),
        };
        if let Some(ps) = pos_side {
            o.s("posSide", ps);
        }
        o.n("pos", pos, if pos.fract() == 0.0 { 0 } else { 1 });
        o.s("posId", &id18(rng));
        o.s("mgnMode", if self.isolated { "isolated" } else { "cross" });
    }

    /// avgPx, markPx, upl, uplRatio, lever, liqPx: empty or zero where a
    /// closed position has none.
    fn prices(&self, o: &mut Obj, rng: &mut impl RngExt) {
        let (closed, dp) = (self.p.closed, self.mk.dp);
        if closed {
            for k in ["avgPx", "upl", "uplRatio"] {
                o.s(k, if k == "avgPx" { "" } else { "0" });
            }
        } else {
            o.n("avgPx", self.avg, dp);
        }
        o.n("markPx", self.mark, dp);
        if !closed {
            o.n("upl", self.upl, self.ccy_dp);
            let ratio = if self.im > 0.0 {
                self.upl / self.im
            } else {
                0.0
            };
            o.n("uplRatio", ratio, 6);
        }
        o.s("lever", &self.lever.to_string());
        let liq = self.avg * (1.0 - self.dir * (1.0 / self.lever as f64 - 0.005));
        if closed || (!self.isolated && rng.random_bool(0.2)) || liq <= 0.0 {
            o.s("liqPx", "");
        } else {
            o.n("liqPx", liq, dp);
        }
    }

    /// margin, mgnRatio, mmr, imr, notionalUsd, last, ccy, adl,
    /// realizedPnl, fundingFee, cTime, uTime.
    fn margin_and_accounting(&self, o: &mut Obj, rng: &mut impl RngExt) {
        let (closed, ccy_dp, im) = (self.p.closed, self.ccy_dp, self.im);
        if self.isolated {
            o.n("margin", im, ccy_dp);
        } else {
            o.s("margin", "");
        }
        if closed {
            o.s("mgnRatio", "");
        } else {
            o.n("mgnRatio", rng.random_range(2.0..400.0), 2);
        }
        o.n("mmr", im * self.lever as f64 * 0.004, ccy_dp);
        if self.isolated {
            o.s("imr", "");
        } else {
            o.n("imr", im, ccy_dp);
        }
        o.n("notionalUsd", self.notional_usd, 2);
        o.n("last", self.last, self.mk.dp);
        o.s("ccy", self.mk.ccy);
        o.s(
            "adl",
            if closed {
                "0"
            } else {
                ["1", "2", "3", "4", "5"][rng.random_range(0..5)]
            },
        );
        o.n("realizedPnl", rng.random_range(-50.0..80.0), ccy_dp);
        o.n("fundingFee", rng.random_range(-3.0..1.0), ccy_dp);
        o.s("cTime", &self.c_time.to_string());
        o.s("uTime", &self.u_time.to_string());
    }

    /// closeOrderAlgo (now and then a stop-loss), and the occasional
    /// extra, reduceOnly and feeRate.
    fn optional_fields(&self, o: &mut Obj, rng: &mut impl RngExt) {
        if rng.random_bool(0.1) && !self.p.closed {
            let sl = self.avg * (1.0 - self.dir * 0.05);
            let mut text = String::with_capacity(200);
            text.push('[');
            let mut algo = Obj(&mut text, false);
            algo.s("algoId", &id18(rng));
            algo.n("slTriggerPx", sl, self.mk.dp);
            algo.s("slTriggerPxType", "last");
            algo.s("tpTriggerPx", "");
            algo.s("tpTriggerPxType", "");
            algo.s("closeFraction", "1");
            algo.finish();
            text.push(']');
            o.raw("closeOrderAlgo", &text);
        } else {
            o.raw("closeOrderAlgo", "[]");
        }
        if rng.random_bool(0.05) {
            o.raw("extra", r#"{"b":1,"a":2}"#);
        }
        if rng.random_bool(0.15) {
            o.raw(
                "reduceOnly",
                if rng.random_bool(0.5) {
                    "true"
                } else {
                    "false"
                },
            );
        }
        if rng.random_bool(0.15) {
            o.raw("feeRate", FEE_RATES[rng.random_range(0..FEE_RATES.len())]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn fixed_formats_like_okx() {
        let f = |v, dp| {
            let mut s = String::new();
            fixed(&mut s, v, dp);
            s
        };
        assert_eq!(f(-3.0, 0), "-3");
        assert_eq!(f(0.32171, 5), "0.32171");
        assert_eq!(f(-0.004, 2), "0.00");
        assert_eq!(f(-0.0, 0), "0");
        assert_eq!(f(97250.05, 1), "97250.1");
        assert_eq!(f(-12.5, 1), "-12.5");
    }

    #[test]
    fn positions_are_valid_json_with_expected_fields() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for i in 0..2000 {
            let spec = PosSpec {
                market: i % MARKETS.len(),
                net_mode: i % 2 == 0,
                short: i % 3 == 0,
                closed: i % 7 == 0,
                drop_inst_id: false,
            };
            let text = position_json(&mut rng, spec);
            let v: serde_json::Value = serde_json::from_str(&text).expect(&text);
            // Compact with keys in order; serde_json re-prints 2.5e-5 as
            // 0.000025, which is why a migration must keep a number's text.
            let reprinted = serde_json::to_string(&v)
                .unwrap()
                .replace("0.000025", "2.5e-5");
            assert_eq!(reprinted, text, "compact, order kept");
            let pos: f64 = v["pos"].as_str().unwrap().parse().unwrap();
            if spec.closed {
                assert_eq!(v["pos"], "0");
            } else if spec.net_mode {
                assert_eq!(pos < 0.0, spec.short, "{text}");
            } else {
                assert!(pos > 0.0, "long/short mode pos is positive: {text}");
                let side = v["posSide"].as_str().unwrap().to_ascii_lowercase();
                assert_eq!(side == "short", spec.short);
            }
            assert!(v["closeOrderAlgo"].is_array());
            for k in [
                "instId", "posId", "mgnMode", "markPx", "lever", "ccy", "cTime", "uTime",
            ] {
                assert!(v[k].is_string(), "{k} in {text}");
            }
        }
    }
}
