"""FewShotClassifier: scikit-learn conventions, the same predictions as evaluation's forward and a brute-force
matcher, every image kind converted as the loaders convert theirs, one clear error per bad input."""
import io
import subprocess
import sys
import types
import zipfile

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

import matchers
from episodes import EpisodeSampler, load_splits
from episodes.decode import decode_image
from fewshot import Config, FewShotClassifier
from fewshot.checkpoint import save_atomic
from fewshot.evaluation import evaluate
from fewshot.image_input import to_model_images
from fewshot.model import EpisodicModel, build_model


def seeded_model(seed=0, **settings) -> torch.nn.Module:
    """A freshly initialised model of ``Config(**settings)`` for 28 x 28 grayscale images (global RNG untouched)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build_model(Config(**{"backbone": "test_vig", "matcher": "prototype", **settings}), 28, 1).eval()


def write_run(folder, seed=0, **settings):
    """A run folder as ``fewshot train`` leaves it (config.yaml, best.pt), with seeded untrained weights."""
    config = Config(**{"dataset": "glyphs", "backbone": "test_vig", "matcher": "prototype", "run_dir": str(folder),
                       "track": False, **settings})
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    save_atomic({"model": seeded_model(seed, **settings).state_dict()}, folder / "best.pt")
    return folder


@pytest.fixture(scope="module")
def test_split():
    return load_splits("glyphs", None, 28).test


@pytest.fixture(scope="module")
def model():
    return seeded_model()


@pytest.fixture(scope="module")
def episodes(test_split):
    """Three 5-way 2-shot episodes of 3 queries per class from the glyphs test split."""
    return EpisodeSampler(test_split, way=5, shot=2, query=3, seed=7).bank(3)


def images_of(test_split, idx):
    return [test_split.images[i] for i in idx.tolist()]


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


class TestScikitLearnConventions:
    def test_the_constructor_stores_its_arguments_unchanged(self, model):
        opts = {"k": 1}
        clf = FewShotClassifier(model=model, img_size=28, in_chans=1, matcher="dn4", matcher_opts=opts)
        params = clf.get_params()
        assert params["model"] is model and params["matcher_opts"] is opts
        assert {k: v for k, v in params.items() if k not in ("model", "matcher_opts")} == dict(
            weights=None, run_dir=None, checkpoint="best", img_size=28, in_chans=1, matcher="dn4", invert="auto",
            batch_size=64, device="cpu")

    @pytest.mark.parametrize("check", ["check_no_attributes_set_in_init", "check_parameters_default_constructible",
                                       "check_get_params_invariance", "check_set_params"])
    def test_passes_scikit_learns_own_checks_that_need_no_array_data(self, check):
        from sklearn.utils import estimator_checks

        getattr(estimator_checks, check)("FewShotClassifier", FewShotClassifier())

    def test_fit_returns_self_with_sorted_classes(self, model, test_split, episodes):
        ep = episodes[0]
        clf = FewShotClassifier(model=model, img_size=28, in_chans=1)
        names = np.array(["echo", "delta", "charlie", "bravo", "alpha"])
        assert clf.fit(images_of(test_split, ep.support), names[ep.support_labels.numpy()]) is clf
        assert clf.classes_.tolist() == ["alpha", "bravo", "charlie", "delta", "echo"]

    @pytest.mark.parametrize("method", ["predict", "predict_proba", "decision_function", "score"])
    def test_using_it_before_fit_raises_not_fitted_error(self, model, test_split, method):
        clf = FewShotClassifier(model=model, img_size=28, in_chans=1)
        args = (images_of(test_split, torch.arange(2)),) + (([0, 1],) if method == "score" else ())
        with pytest.raises(NotFittedError):
            getattr(clf, method)(*args)

    def test_embed_needs_no_fit_and_gives_the_matchers_input(self, model, test_split):
        imgs = images_of(test_split, torch.arange(3))
        pooled = FewShotClassifier(model=model, img_size=28, in_chans=1).embed(imgs)
        nodes = FewShotClassifier(model=model, img_size=28, in_chans=1, matcher="dn4").embed(imgs)
        assert pooled.shape == (3, model.backbone.num_features) and pooled.dtype == np.float32
        assert nodes.shape == (3, 49, model.backbone.num_features)
        with torch.inference_mode():
            ref = model.embed(torch.stack(imgs))
        np.testing.assert_allclose(pooled, ref.numpy(), rtol=1e-5, atol=1e-5)

    def test_set_params_changes_the_matcher_of_the_next_fit(self, model, test_split, episodes):
        ep = episodes[0]
        clf = FewShotClassifier(model=model, img_size=28, in_chans=1)
        clf.fit(images_of(test_split, ep.support), ep.support_labels)
        assert clf.matcher_ is model.matcher
        clf.set_params(matcher="dn4", matcher_opts={"k": "2"}).fit(images_of(test_split, ep.support), ep.support_labels)
        assert isinstance(clf.matcher_, matchers.DN4Matcher) and clf.matcher_.k == 2
        assert clf.support_.shape == (10, 49, model.backbone.num_features)

    def test_clone_is_unfitted_and_fits_to_the_same_predictions(self, model, test_split, episodes):
        ep = episodes[0]
        clf = FewShotClassifier(model=model, img_size=28, in_chans=1).fit(images_of(test_split, ep.support),
                                                                          ep.support_labels)
        twin = clone(clf)
        with pytest.raises(NotFittedError):
            twin.predict(images_of(test_split, ep.query))
        twin.fit(images_of(test_split, ep.support), ep.support_labels)
        np.testing.assert_array_equal(twin.predict(images_of(test_split, ep.query)),
                                      clf.predict(images_of(test_split, ep.query)))

    def test_predict_proba_rows_sum_to_one_and_follow_classes(self, model, test_split, episodes):
        ep = episodes[1]
        names = np.array(["e", "d", "c", "b", "a"])  # label i is names[i]: classes_ (sorted) reverses the columns
        clf = FewShotClassifier(model=model, img_size=28, in_chans=1).fit(images_of(test_split, ep.support),
                                                                          names[ep.support_labels.numpy()])
        proba = clf.predict_proba(images_of(test_split, ep.query))
        with torch.inference_mode():
            logits = model(test_split.images[ep.support], ep.support_labels, test_split.images[ep.query])
        ref = torch.softmax(logits.double(), -1).numpy()[:, ::-1]  # columns a, b, c, d, e = labels 4, 3, 2, 1, 0
        assert proba.shape == (len(ep.query), 5)
        np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-12)
        np.testing.assert_allclose(proba, ref, atol=1e-5)
        np.testing.assert_array_equal(clf.predict(images_of(test_split, ep.query)), clf.classes_[proba.argmax(1)])

    def test_score_is_the_accuracy(self, model, test_split, episodes):
        ep = episodes[0]
        clf = FewShotClassifier(model=model, img_size=28, in_chans=1).fit(images_of(test_split, ep.support),
                                                                          ep.support_labels)
        pred = clf.predict(images_of(test_split, ep.query))
        assert clf.score(images_of(test_split, ep.query), ep.query_labels) == pytest.approx(
            float((torch.as_tensor(pred) == ep.query_labels).float().mean()))

    def test_labels_of_any_hashable_kind_come_back_as_given(self, model, test_split, episodes):
        ep = episodes[0]
        kinds = [("x", 1), 7, "seven", 2.5, None]  # unorderable: classes_ keep their first appearance
        labels = [kinds[i] for i in ep.support_labels.tolist()]
        clf = FewShotClassifier(model=model, img_size=28, in_chans=1).fit(images_of(test_split, ep.support), labels)
        assert clf.classes_.dtype == object and clf.classes_.tolist() == list(dict.fromkeys(labels))
        assert set(clf.predict(images_of(test_split, ep.query)).tolist()) <= set(kinds)

    def test_repr_names_the_arguments_that_differ_from_their_defaults(self, model):
        assert repr(FewShotClassifier(weights="w.x", matcher="dn4")) == "FewShotClassifier(weights='w.x', matcher='dn4')"
        assert repr(FewShotClassifier(model=model, img_size=28, in_chans=1)) == \
            "FewShotClassifier(model=<EpisodicModel>, img_size=28, in_chans=1)"

    def test_importing_fewshot_loads_neither_torch_nor_sklearn(self):
        code = "import sys, fewshot; print(sorted({'torch', 'sklearn'} & set(sys.modules)), 'FewShotClassifier' in dir(fewshot))"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "[] True"
        assert FewShotClassifier.__module__ == "fewshot.classifier"


class TestSamePredictionsAsEvaluation:
    @pytest.mark.parametrize("matcher", ["prototype", "dn4"])
    def test_each_episode_gives_the_forward_passs_logits_and_evaluations_accuracy(self, test_split, episodes, matcher):
        model = seeded_model(matcher=matcher)
        clf = FewShotClassifier(model=model, img_size=28, in_chans=1, batch_size=4)
        accuracies = evaluate(model, test_split, episodes).accuracies
        for i, ep in enumerate(episodes):
            clf.fit(images_of(test_split, ep.support), ep.support_labels)
            logits = clf.decision_function(images_of(test_split, ep.query))
            with torch.inference_mode():
                ref = model(test_split.images[ep.support], ep.support_labels, test_split.images[ep.query])
            np.testing.assert_allclose(logits, ref.numpy(), rtol=1e-4, atol=1e-4)
            np.testing.assert_array_equal(clf.predict(images_of(test_split, ep.query)), ref.argmax(1).numpy())
            assert clf.score(images_of(test_split, ep.query), ep.query_labels) == pytest.approx(float(accuracies[i]))

    def test_a_model_with_support_views_scores_its_views_as_its_forward_does(self, test_split, episodes):
        model = seeded_model(support_views=2, view_keep=0.5)
        ep = episodes[2]
        clf = FewShotClassifier(model=model, img_size=28, in_chans=1, batch_size=3)
        clf.fit(images_of(test_split, ep.support), ep.support_labels)
        assert clf.support_.shape[0] == 3 * len(ep.support)
        with torch.inference_mode():
            ref = model(test_split.images[ep.support], ep.support_labels, test_split.images[ep.query])
        np.testing.assert_allclose(clf.decision_function(images_of(test_split, ep.query)), ref.numpy(), rtol=1e-4, atol=1e-4)

    def test_a_prompt_tuned_per_episode_runs_the_whole_model_per_batch_of_queries(self, test_split, episodes):
        model = seeded_model(prompt="gpf", adapt="tune", adapt_steps=2)
        assert not model.episode_independent
        ep = episodes[0]
        clf = FewShotClassifier(model=model, img_size=28, in_chans=1, batch_size=4)
        clf.fit(images_of(test_split, ep.support), ep.support_labels)
        assert clf.support_ is None
        with torch.inference_mode():
            ref = model(test_split.images[ep.support], ep.support_labels, test_split.images[ep.query])
        np.testing.assert_allclose(clf.decision_function(images_of(test_split, ep.query)), ref.numpy(), rtol=1e-4, atol=1e-4)


class TestBruteForceMatchers:
    def test_prototype_logits_are_minus_the_squared_distance_to_each_class_mean(self, model, test_split, episodes):
        ep = episodes[0]
        clf = FewShotClassifier(model=model, img_size=28, in_chans=1).fit(images_of(test_split, ep.support),
                                                                          ep.support_labels)
        support = clf.embed(images_of(test_split, ep.support)).astype(np.float64)
        query = clf.embed(images_of(test_split, ep.query)).astype(np.float64)
        labels = ep.support_labels.numpy()
        ref = np.array([[-sum((q[d] - support[labels == c][:, d].mean()) ** 2 for d in range(q.size))
                         for c in range(5)] for q in query])
        np.testing.assert_allclose(clf.decision_function(images_of(test_split, ep.query)), ref, rtol=1e-4, atol=1e-3)

    def test_dn4_logits_sum_each_query_nodes_k_best_cosines_within_a_class(self, model, test_split, episodes):
        ep = episodes[1]
        clf = FewShotClassifier(model=model, img_size=28, in_chans=1, matcher="dn4", matcher_opts={"k": 3})
        clf.fit(images_of(test_split, ep.support), ep.support_labels)
        support = clf.embed(images_of(test_split, ep.support)).astype(np.float64)   # [10, 49, D]
        query = clf.embed(images_of(test_split, ep.query)).astype(np.float64)       # [15, 49, D]
        unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
        labels = ep.support_labels.numpy()
        ref = np.zeros((len(query), 5))
        for qi, q in enumerate(unit(query)):
            for c in range(5):
                nodes = unit(support[labels == c]).reshape(-1, support.shape[-1])  # the class's 2 x 49 nodes
                for m in range(q.shape[0]):
                    ref[qi, c] += np.sort(nodes @ q[m])[-3:].sum()
        np.testing.assert_allclose(clf.decision_function(images_of(test_split, ep.query)), ref, rtol=1e-4, atol=1e-3)


class TestEmbedsTheSupportOnce:
    def test_fit_embeds_the_support_and_predict_only_the_queries_in_batches(self, test_split, episodes, monkeypatch):
        model = seeded_model()
        calls = []
        embed = model.embed
        monkeypatch.setattr(model, "embed", lambda images, **kw: calls.append(images.shape[0]) or embed(images, **kw))
        ep = episodes[0]
        clf = FewShotClassifier(model=model, img_size=28, in_chans=1, batch_size=4)
        clf.fit(images_of(test_split, ep.support), ep.support_labels)
        assert calls == [4, 4, 2]
        calls.clear()
        clf.predict(images_of(test_split, ep.query))
        clf.predict_proba(images_of(test_split, ep.query[:5]))
        assert calls == [4, 4, 4, 3] + [4, 1]


class TestImageInputs:
    def test_every_kind_of_image_gives_the_same_pixels(self, test_split, tmp_path):
        x = test_split.images[3]                                   # uint8 [1, 28, 28], bright strokes on black
        gray = x[0].numpy()
        path = tmp_path / "glyph.png"
        path.write_bytes(png_bytes(gray))
        kinds = [x, x[0], gray, gray[..., None], np.repeat(gray[..., None], 3, -1), Image.fromarray(gray),
                 Image.fromarray(gray).convert("RGB"), Image.fromarray(gray).convert("RGBA"), path, str(path),
                 torch.from_numpy(np.repeat(gray[None], 3, 0))]
        out = to_model_images(kinds, 28, 1)
        for i in range(len(kinds)):
            assert torch.equal(out[i], x), f"kind {i}"
        assert torch.equal(to_model_images(torch.stack([x, x]), 28, 1), torch.stack([x, x]))

    def test_a_raw_omniglot_png_becomes_the_loaders_image(self, shared_data, tmp_path):
        with zipfile.ZipFile(shared_data / "omniglot" / "images_background_small2.zip") as z:
            name = next(n for n in z.namelist() if n.endswith(".png"))
            data = z.read(name)
        path = tmp_path / "char.png"
        path.write_bytes(data)
        loader = 255 - decode_image(data, name, 28, 1)           # what episodes.omniglot makes of it
        assert torch.equal(to_model_images([path], 28, 1)[0], loader)            # black on white: inverted
        assert torch.equal(to_model_images([Image.open(path)], 28, 1)[0], loader)
        assert torch.equal(to_model_images([path], 28, 1, invert=False)[0], 255 - loader)

    def test_invert_auto_flips_only_grayscale_images_with_a_bright_border(self, test_split):
        dark = test_split.images[0]
        bright = 255 - dark
        assert torch.equal(to_model_images([dark, bright], 28, 1), torch.stack([dark, dark]))
        assert torch.equal(to_model_images([dark, bright], 28, 1, invert=True), torch.stack([bright, dark]))
        assert torch.equal(to_model_images([dark, bright], 28, 1, invert=False), torch.stack([dark, bright]))
        rgb = to_model_images([bright], 28, 3)[0]
        assert torch.equal(rgb, bright.expand(3, -1, -1))                   # an RGB model is never inverted

    def test_images_are_resized_bilinearly_to_the_models_side(self):
        big = np.zeros((105, 70), dtype=np.uint8)
        big[40:60, 20:50] = 255
        ref = np.array(Image.fromarray(big).resize((28, 28), Image.Resampling.BILINEAR))
        assert torch.equal(to_model_images([big], 28, 1)[0, 0], torch.from_numpy(ref))


class TestPretrainedAndRuns:
    @pytest.fixture
    def fake_pretrained(self, monkeypatch):
        """``fewshot.pretrained`` serving one name, a seeded model with the run's matcher settings."""
        import fewshot

        try:
            import fewshot.pretrained as module
        except ImportError:  # the shipped weights' module has not landed: a stand-in
            module = types.ModuleType("fewshot.pretrained")
            monkeypatch.setitem(sys.modules, "fewshot.pretrained", module)
            monkeypatch.setattr(fewshot, "pretrained", module, raising=False)
        loads = []
        config = Config(backbone="test_vig", matcher="prototype", metric="cosine", temperature=0.5)

        def load_pretrained(name):
            loads.append(name)
            return config, seeded_model(metric="cosine", temperature=0.5), {"img_size": 28, "in_chans": 1,
                                                                            "dataset": "glyphs"}
        monkeypatch.setattr(module, "list_pretrained", lambda: ["test_vig.glyphs"], raising=False)
        monkeypatch.setattr(module, "load_pretrained", load_pretrained, raising=False)
        return loads

    def test_from_pretrained_loads_the_weights_once_and_keeps_their_name(self, fake_pretrained, test_split, episodes):
        clf = FewShotClassifier.from_pretrained("test_vig.glyphs")
        assert fake_pretrained == ["test_vig.glyphs"] and clf.get_params()["weights"] == "test_vig.glyphs"
        ep = episodes[0]
        big = [np.asarray(Image.fromarray(test_split.images[i, 0].numpy()).resize((56, 56))) for i in ep.support.tolist()]
        clf.fit(big, ep.support_labels).predict(images_of(test_split, ep.query))  # 56 px in, resized to 28
        assert fake_pretrained == ["test_vig.glyphs"]
        assert (clf.matcher_.metric, clf.matcher_.temperature) == ("cosine", 0.5)

    def test_matcher_options_apply_on_top_of_the_weights_own_settings(self, fake_pretrained):
        clf = FewShotClassifier.from_pretrained("test_vig.glyphs", temperature="0.1")
        assert clf.matcher_opts == {"temperature": "0.1"}
        scorer = clf._scorer()
        assert (scorer.matcher.metric, scorer.matcher.temperature) == ("cosine", 0.1)
        other = FewShotClassifier.from_pretrained("test_vig.glyphs", matcher="knn", k=1)._scorer().matcher
        assert isinstance(other, matchers.KNNMatcher) and other.k == 1

    def test_an_unknown_name_lists_the_shipped_ones(self, fake_pretrained):
        with pytest.raises(ValueError, match=r"unknown pretrained weights 'test_vig\.glyph'; valid names: "
                                             r"test_vig\.glyphs\. Did you mean 'test_vig\.glyphs'\?"):
            FewShotClassifier.from_pretrained("test_vig.glyph")

    def test_from_run_predicts_as_the_runs_model(self, tmp_path, test_split, episodes):
        from fewshot.evaluate_run import load_run_config, load_trained_model

        run = write_run(tmp_path / "run", seed=3, matcher="dn4")
        clf = FewShotClassifier.from_run(run)
        model, _ = load_trained_model(run, load_run_config(run), test_split)
        ep = episodes[0]
        clf.fit(images_of(test_split, ep.support), ep.support_labels)
        with torch.inference_mode():
            ref = model.eval()(test_split.images[ep.support], ep.support_labels, test_split.images[ep.query])
        np.testing.assert_allclose(clf.decision_function(images_of(test_split, ep.query)), ref.numpy(), rtol=1e-4)
        assert isinstance(clf.matcher_, matchers.DN4Matcher)

    def test_a_missing_checkpoint_is_named(self, tmp_path):
        run = write_run(tmp_path / "run")
        with pytest.raises(ValueError, match=f"{run / 'last.pt'}: checkpoint not found"):
            FewShotClassifier.from_run(run, checkpoint="last")


class TestBadInput:
    @pytest.fixture
    def clf(self, model):
        return FewShotClassifier(model=model, img_size=28, in_chans=1, batch_size=2)

    @pytest.fixture
    def imgs(self, test_split):
        return images_of(test_split, torch.arange(4))

    def test_a_single_class(self, clf, imgs):
        with pytest.raises(ValueError, match=r"^fit needs at least 2 classes to tell apart, got only 'a' \(4 images\)$"):
            clf.fit(imgs, ["a"] * 4)

    def test_an_empty_fit(self, clf):
        with pytest.raises(ValueError, match="^fit got no images: give at least one image of each of at least 2 classes$"):
            clf.fit([], [])

    def test_mismatched_lengths(self, clf, imgs):
        with pytest.raises(ValueError, match="^fit got 4 images but 3 labels; give one label per image$"):
            clf.fit(imgs, [0, 1, 0])

    def test_an_unhashable_label(self, clf, imgs):
        with pytest.raises(ValueError, match=r"^labels\[1\] \(\[1, 2\]\) is not hashable"):
            clf.fit(imgs, [0, [1, 2], 0, 1])

    def test_a_corrupt_file_is_named(self, clf, imgs, tmp_path):
        bad = tmp_path / "broken.png"
        bad.write_bytes(png_bytes(np.zeros((28, 28), np.uint8))[:40])
        with pytest.raises(ValueError, match=f"^{bad}: not a readable image"):
            clf.fit(imgs[:3] + [bad], [0, 1, 0, 1])

    def test_a_missing_file_is_named(self, clf, imgs, tmp_path):
        with pytest.raises(ValueError, match=f"^{tmp_path / 'nope.png'}: cannot read image file"):
            clf.fit(imgs[:1] + [tmp_path / "nope.png"], [0, 1])

    def test_a_bad_query_is_named_by_its_index_across_batches(self, clf, imgs):
        clf.fit(imgs, [0, 1, 0, 1])
        queries = imgs + [np.zeros((28, 28), np.float32)]
        with pytest.raises(ValueError, match=r"^images\[4\]: expected uint8 pixels in 0\.\.255, got dtype float32"):
            clf.predict(queries)

    @pytest.mark.parametrize("image, message", [
        (np.zeros((28, 28, 2), np.uint8), r"images\[1\]: an H x W x C image needs 1, 3 or 4 channels, got shape "
                                          r"\(28, 28, 2\)$"),
        (np.zeros((3, 28, 30), np.uint8), r"images\[1\]: .* got shape \(3, 28, 30\) \(it looks channels-first"),
        (np.zeros((0, 5), np.uint8), r"images\[1\]: empty image of shape \(0, 5\)"),
        (torch.zeros(2, 28, 28, dtype=torch.uint8), r"images\[1\]: a \[C, H, W\] tensor needs 1, 3 or 4 channels"),
        (torch.zeros(28, 28), r"images\[1\]: expected a uint8 tensor \(pixels 0\.\.255\), got torch\.float32"),
    ])
    def test_an_image_the_backbone_cannot_take_is_named(self, clf, imgs, image, message):
        with pytest.raises(ValueError, match=message):
            clf.fit([imgs[0], image], [0, 1])

    def test_an_object_that_is_no_image(self, clf, imgs):
        with pytest.raises(TypeError, match=r"^images\[2\]: expected a file path, a PIL image, a uint8 numpy array "
                                            r"or a uint8 tensor, got dict$"):
            clf.fit(imgs[:2] + [{}], [0, 1, 1])

    def test_a_lone_image_instead_of_a_sequence(self, clf, imgs):
        clf.fit(imgs, [0, 1, 0, 1])
        with pytest.raises(TypeError, match=r"images must be a sequence of images, got one str; pass \[image\]"):
            clf.predict("a.png")

    def test_an_unknown_matcher_lists_the_registered_ones(self, model, imgs):
        clf = FewShotClassifier(model=model, img_size=28, in_chans=1, matcher="dn5")
        with pytest.raises(ValueError, match=r"unknown matcher 'dn5'; valid names: .*dn4.* Did you mean 'dn4'\?"):
            clf.fit(imgs, [0, 1, 0, 1])

    def test_a_matcher_option_it_does_not_take(self, model, imgs):
        clf = FewShotClassifier(model=model, img_size=28, in_chans=1, matcher="dn4", matcher_opts={"kk": 3})
        with pytest.raises(ValueError, match=r"matcher 'dn4' has no option 'kk'; its options: k, temperature, reduce"):
            clf.fit(imgs, [0, 1, 0, 1])

    def test_a_matcher_option_too_large_for_the_support_fails_at_fit(self, model, imgs):
        clf = FewShotClassifier(model=model, img_size=28, in_chans=1, matcher="dn4", matcher_opts={"k": 100})
        with pytest.raises(ValueError, match="k=100 exceeds the 98 support nodes of the smallest class"):
            clf.fit(imgs, [0, 1, 0, 1])

    @pytest.mark.parametrize("kwargs, message", [
        ({}, "give exactly one of weights= .* got none"),
        ({"weights": "a", "run_dir": "b"}, "give exactly one of .* got weights and run_dir"),
        ({"model": "MODEL", "in_chans": 1}, r"model= needs img_size= \(a positive integer"),
        ({"weights": "a", "img_size": 28}, "img_size= and in_chans= are for model=; the weights define their own"),
        ({"model": "MODEL", "img_size": 28, "in_chans": 1, "invert": "yes"}, "invert must be 'auto', True or False"),
        ({"model": "MODEL", "img_size": 28, "in_chans": 1, "batch_size": 0}, "batch_size must be a positive integer"),
    ])
    def test_bad_arguments_fail_at_fit_with_their_names(self, model, imgs, kwargs, message):
        kwargs = {k: model if v == "MODEL" else v for k, v in kwargs.items()}
        clf = FewShotClassifier(**kwargs)  # stored unchanged, checked when used
        with pytest.raises(ValueError, match=message):
            clf.fit(imgs, [0, 1, 0, 1])
