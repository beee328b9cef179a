"""Label configs with Label Studio's smart click tools, shared by tests/test_prompts.py and
tests/backend/test_clicks.py (a plain module: tests/conftest.py puts tests/ on sys.path)."""

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
