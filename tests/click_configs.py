"""Label configs with Label Studio's smart click tools, shared by tests/test_prompts.py,
tests/backend/test_clicks.py and tests/e2e (a plain module: tests/conftest.py puts tests/ on sys.path)."""
from pathlib import Path

CLICKS = """<View>
  <Image name="image" value="$image"/>
  <Text name="expr" value="$expression"/>
  <KeyPointLabels name="click" toName="image" smart="true"><Label value="object"/></KeyPointLabels>
  <RectangleLabels name="box" toName="image" smart="true"><Label value="object"/></RectangleLabels>
  <BrushLabels name="mask" toName="image"><Label value="target"/></BrushLabels>
</View>"""
CLICKS_ONLY = """<View>
  <Image name="image" value="$image"/>
  <KeyPointLabels name="click" toName="image" smart="true"><Label value="object"/></KeyPointLabels>
  <BrushLabels name="mask" toName="image"><Label value="target"/></BrushLabels>
</View>"""


def readme_config() -> str:
    """The label config of the README's "Label config" section (its first ```xml block), as users copy it."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    return text.split("```xml\n", 1)[1].split("```", 1)[0]
