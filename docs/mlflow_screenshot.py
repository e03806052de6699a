"""Screenshot of MLflow's run comparison for docs/experiments.md, taken from a real distorted-MNIST run.

Needs a running MLflow server over the store the experiment logged into, Playwright
(`pip install playwright`) and a Chromium (`playwright install chromium`, or pass the path of a
system one with --chromium):

    mlflow server --backend-store-uri sqlite:///mlflow.db --port 5000 &
    python docs/mlflow_screenshot.py --run-name "rts tensorflow" --output docs/mlflow_compare.png

It opens MLflow's compare-runs page for the child runs of the newest parent run with that name,
keeps the `transform` parameter and the `test_error` metric in the parallel-coordinates plot, and
saves the page.
"""

import argparse
import json
import urllib.parse

import mlflow


def compare_url(server, experiment_name, run_name):
    mlflow.set_tracking_uri(server)
    experiment = mlflow.get_experiment_by_name(experiment_name)
    if experiment is None:
        raise SystemExit(f"no experiment named {experiment_name!r} at {server}")
    parents = mlflow.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.mlflow.runName = '{run_name}'",
        order_by=["start_time DESC"],
    )
    if parents.empty:
        raise SystemExit(f"no run named {run_name!r} in experiment {experiment_name!r}")
    children = mlflow.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parents.run_id.iloc[0]}'",
        order_by=["start_time ASC"],
    )
    runs = urllib.parse.quote(json.dumps(list(children.run_id)))
    experiments = urllib.parse.quote(json.dumps([experiment.experiment_id]))
    return f"{server}/#/compare-runs?runs={runs}&experiments={experiments}"


def keep_only(page, unwanted):
    """Removes the named parameters/metrics from the plot's selectors."""
    for name in unwanted:
        items = page.locator(".du-bois-light-select-selection-item")
        for index in range(items.count()):
            item = items.nth(index)
            if item.locator(".du-bois-light-select-selection-item-content").inner_text().strip() == name:
                item.locator(".du-bois-light-select-selection-item-remove").click()
                page.wait_for_timeout(300)
                break


def screenshot(url, output, chromium=None, width=1700, height=1000):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": width, "height": height})
        page.goto(url)
        page.wait_for_timeout(6000)
        page.get_by_text("Model training").first.click()  # the classic (non-GenAI) view
        page.wait_for_timeout(1000)
        assistant = page.locator("button[aria-label='Close']")  # the assistant side panel, if shown
        if assistant.count():
            assistant.first.click()
            page.wait_for_timeout(500)
        keep_only(page, ["model", "params", "accuracy"])
        page.locator("input[role='combobox']").nth(1).click(force=True)  # the metrics selector
        page.keyboard.type("test_error")
        page.keyboard.press("Enter")
        page.keyboard.press("Escape")
        page.wait_for_timeout(1500)
        page.screenshot(path=output)
        browser.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="http://127.0.0.1:5000", help="MLflow server URL")
    parser.add_argument("--experiment-name", default="distorted-mnist", help="experiment holding the run")
    parser.add_argument("--run-name", required=True, help='parent run name, e.g. "rts tensorflow"')
    parser.add_argument("--output", default="docs/mlflow_compare.png", help="PNG to write")
    parser.add_argument("--chromium", default=None, help="path of a Chromium binary (default: Playwright's)")
    args = parser.parse_args()
    url = compare_url(args.server, args.experiment_name, args.run_name)
    screenshot(url, args.output, args.chromium)
    print(f"{url} -> {args.output}")


if __name__ == "__main__":
    main()
