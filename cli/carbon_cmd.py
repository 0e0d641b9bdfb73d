"""``xgen carbon``: training energy and emissions (CO2eq) as in SPEC §6."""
from __future__ import annotations

import click

from cli.common import format_option, number, report, user_errors
from xgen_train.evaluate import evaluation as ev  # numpy only, no JAX


@click.command("carbon")
@click.option("--device-hours", default=float(ev.SPEC_DEVICE_HOURS), show_default=True, type=number(min=0),
              help="Accelerator-hours of training (SPEC §6: XGen-7B used 270,336 TPU-hours).")
@click.option("--watts", default=ev.SPEC_WATTS, show_default=True, type=number(min=0),
              help="Average power per device (W).")
@click.option("--pue", default=ev.SPEC_PUE, show_default=True, type=number(min=1),
              help="Data-centre power usage effectiveness (total facility power / IT power, at least 1).")
@click.option("--kg-per-kwh", default=ev.SPEC_KG_PER_KWH, show_default=True, type=number(min=0),
              help="Grid carbon intensity, kg CO2eq per kWh (= tonnes per MWh).")
@format_option()
@user_errors
def carbon(device_hours: float, watts: float, pue: float, kg_per_kwh: float, fmt: str) -> None:
    """Energy = device-hours x watts x PUE; emissions = energy x kg/kWh (SPEC §6; defaults are XGen-7B's:
    57.1 MWh, 4.5 tCO2eq). Small runs print in Wh and g/kg CO2eq, never rounded to 0.

    Example: xgen carbon --device-hours 1000 --watts 400 --pue 1.2 --kg-per-kwh 0.4
    """
    import dataclasses

    est = ev.carbon(device_hours, watts, pue, kg_per_kwh)
    report(**dataclasses.asdict(est), kg_co2eq=est.kwh * kg_per_kwh)
    energy = ev.energy_text(est.kwh)
    click.echo(f"{device_hours:,g} device-hours x {watts:g} W x PUE {pue:g} = {energy}")
    click.echo(f"{energy} x {kg_per_kwh:g} kg/kWh = {ev.emissions_text(est.kwh * kg_per_kwh)}")
