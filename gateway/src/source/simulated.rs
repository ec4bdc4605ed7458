//! Simulated device: deterministic waveforms of wall-clock time, so demos and tests need
//! no hardware and the same instant always gives the same value.

use std::str::FromStr;

use super::Values;

/// Shape of a simulated signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waveform {
    Sine,
    Triangle,
    Square,
    Sawtooth,
    Constant,
}

impl FromStr for Waveform {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sine" => Ok(Self::Sine),
            "triangle" => Ok(Self::Triangle),
            "square" => Ok(Self::Square),
            "sawtooth" => Ok(Self::Sawtooth),
            "constant" => Ok(Self::Constant),
            other => Err(format!(
                "unknown waveform {other:?} (sine, triangle, square, sawtooth, constant)"
            )),
        }
    }
}

/// Value of a waveform at `t_secs`: `center + amplitude × shape(phase)`, shape in [-1, 1].
pub fn value_at(w: Waveform, t_secs: f64, period_secs: f64, amplitude: f64, center: f64) -> f64 {
    let phase = (t_secs / period_secs).rem_euclid(1.0);
    let shape = match w {
        Waveform::Sine => (std::f64::consts::TAU * phase).sin(),
        Waveform::Triangle => 1.0 - 4.0 * (phase - 0.5).abs(),
        Waveform::Square => {
            if phase < 0.5 {
                1.0
            } else {
                -1.0
            }
        }
        Waveform::Sawtooth => 2.0 * phase - 1.0,
        Waveform::Constant => 0.0,
    };
    center + amplitude * shape
}

/// Produces the configured points' values for an instant.
#[derive(Debug)]
pub struct SimulatedPoller {
    device: SimulatedDevice,
}

impl SimulatedPoller {
    pub fn new(device: SimulatedDevice) -> Self {
        Self { device }
    }

    pub fn poll(&self, now_ms: i64) -> Values {
        let t = now_ms as f64 / 1000.0 + self.device.phase_secs;
        self.device
            .points
            .iter()
            .map(|p| {
                let v = value_at(p.waveform, t, p.period_secs, p.amplitude, p.center);
                // Three decimals: readable values, and the same text every time.
                (p.name.clone(), (v * 1000.0).round() / 1000.0)
            })
            .collect()
    }
}

/// A device whose values are computed, not read: the demo and tests need no hardware.
#[derive(Debug, Clone)]
pub struct SimulatedDevice {
    pub phase_secs: f64,
    pub points: Vec<SimulatedPoint>,
}

/// One computed value.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulatedPoint {
    pub name: String,
    pub waveform: Waveform,
    pub period_secs: f64,
    pub amplitude: f64,
    pub center: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waveforms_hit_their_landmarks() {
        let at = |w, t| value_at(w, t, 4.0, 2.0, 10.0);
        assert!((at(Waveform::Sine, 1.0) - 12.0).abs() < 1e-9);
        assert!((at(Waveform::Sine, 3.0) - 8.0).abs() < 1e-9);
        assert_eq!(at(Waveform::Triangle, 2.0), 12.0);
        assert_eq!(at(Waveform::Triangle, 0.0), 8.0);
        assert_eq!(at(Waveform::Square, 1.0), 12.0);
        assert_eq!(at(Waveform::Square, 3.0), 8.0);
        assert_eq!(at(Waveform::Sawtooth, 0.0), 8.0);
        assert_eq!(at(Waveform::Constant, 1.234), 10.0);
        assert_eq!(at(Waveform::Square, -1.0), 8.0, "negative time wraps");
    }

    #[test]
    fn the_same_instant_gives_the_same_values() {
        let dev = SimulatedDevice {
            phase_secs: 0.5,
            points: vec![SimulatedPoint {
                name: "t".into(),
                waveform: Waveform::Sine,
                period_secs: 60.0,
                amplitude: 5.0,
                center: 20.0,
            }],
        };
        let p = SimulatedPoller::new(dev);
        assert_eq!(p.poll(1_700_000_000_123), p.poll(1_700_000_000_123));
        assert_ne!(p.poll(1_700_000_000_123), p.poll(1_700_000_015_123));
    }
}
