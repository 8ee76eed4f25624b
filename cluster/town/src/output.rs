//! The town as CSV files and as the validation layer's raw records.

use super::*;

impl Town {
    /// Writes `addresses.csv`, `registry.csv`, `events.csv` and `truth.csv`
    /// into `dir` (created if missing). Shows a progress bar over days when
    /// `progress` is true. Returns the number of events written.
    pub fn write_csv(&self, dir: &Path, progress: bool) -> anyhow::Result<u64> {
        use anyhow::Context as _;
        use std::fmt::Write as _;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let open = |name: &str| -> anyhow::Result<csv::Writer<std::fs::File>> {
            let path = dir.join(name);
            csv::Writer::from_path(&path).with_context(|| format!("creating {}", path.display()))
        };
        let mut time_buf = String::new();
        let mut time2_buf = String::new();
        let fmt_opt_time = |t: Option<i64>, buf: &mut String| {
            buf.clear();
            if let Some(t) = t {
                push_rfc3339(t, buf);
            }
        };

        let mut w = open("addresses.csv")?;
        w.write_record(["code", "lat", "lng", "kind", "area", "label"])?;
        for a in &self.addresses {
            w.write_record([
                a.code.as_str(),
                &format!("{:.6}", a.lat),
                &format!("{:.6}", a.lng),
                a.kind,
                &a.area,
                &a.label,
            ])?;
        }
        w.flush()?;

        let mut w = open("registry.csv")?;
        w.write_record(["person", "address", "kind", "valid_from", "valid_until"])?;
        for r in self.registry() {
            fmt_opt_time(Some(r.valid_from), &mut time_buf);
            fmt_opt_time(r.valid_until, &mut time2_buf);
            w.write_record([
                r.person.to_string().as_str(),
                &r.address,
                r.kind,
                &time_buf,
                &time2_buf,
            ])?;
        }
        w.flush()?;

        let mut w = open("truth.csv")?;
        w.write_record([
            "person",
            "situation",
            "home",
            "registered",
            "arrived",
            "left",
            "night_sources",
        ])?;
        for t in self.truth() {
            fmt_opt_time(t.arrived, &mut time_buf);
            fmt_opt_time(t.left, &mut time2_buf);
            w.write_record([
                t.person.to_string().as_str(),
                t.situation,
                t.home.as_deref().unwrap_or(""),
                t.registered.as_deref().unwrap_or(""),
                &time_buf,
                &time2_buf,
                &t.night_sources.join(";"),
            ])?;
        }
        w.flush()?;

        let bar = if progress {
            let bar = indicatif::ProgressBar::new(u64::from(self.cfg.days));
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg:>18} [{bar:40}] {pos}/{len} days, {elapsed_precise} (eta {eta})",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_message("events");
            bar
        } else {
            indicatif::ProgressBar::hidden()
        };
        let mut w = open("events.csv")?;
        w.write_record(["person", "time", "lat", "lng", "address", "source"])?;
        let (mut person_buf, mut lat_buf, mut lng_buf) =
            (String::new(), String::new(), String::new());
        let mut written = 0u64;
        for d in 0..self.cfg.days {
            for e in self.events_for_day(d) {
                person_buf.clear();
                let _ = write!(person_buf, "{}", e.person);
                time_buf.clear();
                push_rfc3339(e.time, &mut time_buf);
                lat_buf.clear();
                lng_buf.clear();
                if let (Some(lat), Some(lng)) = (e.lat, e.lng) {
                    let _ = write!(lat_buf, "{lat:.6}");
                    let _ = write!(lng_buf, "{lng:.6}");
                }
                w.write_record([
                    person_buf.as_str(),
                    &time_buf,
                    &lat_buf,
                    &lng_buf,
                    e.address.as_deref().unwrap_or(""),
                    e.source,
                ])?;
                written += 1;
            }
            bar.inc(1);
            bar.set_message(format!("{written} events"));
        }
        w.flush()?;
        bar.finish();
        Ok(written)
    }
}

impl Town {
    pub fn raw_addresses(&self) -> Vec<hourcell_query::validate::RawAddress> {
        self.addresses()
            .iter()
            .map(|a| hourcell_query::validate::RawAddress {
                code: a.code.clone(),
                lat: a.lat,
                lng: a.lng,
                kind: a.kind.to_string(),
                area: a.area.clone(),
                label: a.label.clone(),
            })
            .collect()
    }

    pub fn raw_registrations(&self) -> Vec<hourcell_query::validate::RawRegistration> {
        self.registry()
            .into_iter()
            .map(|r| hourcell_query::validate::RawRegistration {
                person: r.person,
                address: r.address,
                kind: r.kind.to_string(),
                valid_from: r.valid_from,
                valid_until: r.valid_until,
            })
            .collect()
    }

    pub fn raw_events(&self, day: u32) -> Vec<hourcell_query::validate::RawEvent> {
        self.events_for_day(day)
            .into_iter()
            .map(|e| hourcell_query::validate::RawEvent {
                person: e.person,
                time: hourcell_query::validate::EventTime::Unix(e.time),
                lat: e.lat,
                lng: e.lng,
                address: e.address,
                source: e.source.to_string(),
            })
            .collect()
    }
}
